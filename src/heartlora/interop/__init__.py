"""Adapters that leave heartlora, and PEFT adapters that come in.

- :mod:`.timm_io`: ``export_merged`` — a merged, unwrapped plain timm checkpoint (+ its JSON);
  ``load_merged`` reads it back through timm's own loader.
- :mod:`.peft_io`: ``to_peft`` / ``from_peft`` / ``import_peft`` — PEFT LoRA adapters on ``qkv``.
- :mod:`.folder`: ``load_adapter_folder`` — a trained adapter folder back as a model.

(``heartlora.merge_and_unload`` itself lives with the adapter format in ``adapters_io``.)
"""
