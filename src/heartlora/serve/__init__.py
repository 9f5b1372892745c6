"""Serving many task adapters on one frozen backbone: the multi-task model (``multitask``), the
adapters it reads (``adapters``, ``loading``), batch prediction over image files (``predict``) and
the HTTP server (``batcher``, ``server``; FastAPI + uvicorn, ``pip install heartlora[serve]``)."""
from .multitask import MultiTask, TaskLogits, UnknownTaskError

__all__ = ["MultiTask", "TaskLogits", "UnknownTaskError"]
