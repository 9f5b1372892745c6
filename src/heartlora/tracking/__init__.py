"""Experiment tracking: runs logged to TensorBoard, MLflow and Weights & Biases.

Modules: :mod:`.base` (the interface a tracker implements), :mod:`.registry` (the trackers by
name, the ``log`` setting), :mod:`.session` (the training callback that drives the trackers),
:mod:`.sweep` (one view per sweep), one module per tracker. Import names from those modules.
"""
