"""Adapters that leave heartlora, and PEFT adapters that come in.

- :mod:`.timm_io`: ``export_merged`` — a merged, unwrapped plain timm checkpoint (+ its JSON);
  ``load_merged`` reads it back through timm's own loader.
- :mod:`.peft_io`: ``to_peft`` / ``from_peft`` / ``import_peft`` — PEFT LoRA adapters on ``qkv``.

(The adapter folder itself — ``merge_and_unload`` included — is owned by ``heartlora.adapters_io``;
``heartlora.engine.build.build_from_adapter_folder`` builds a model from one.)
"""
