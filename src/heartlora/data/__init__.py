"""Datasets of the field for heartlora: VTAB-1K, few-shot FGVC and any image folder.

::

    from heartlora.data import load_task, verify, format_verify_report
    task = load_task("vtab", "/data/vtab-1k", "cifar100", split="final", image_size=224)
    task.train, task.eval, task.num_classes, task.manifest_hash
    print(format_verify_report(verify("fewshot", "/data/few-shot", "oxford_pets", shots=1, seed=0)))

Layouts: ``vtab`` (``<root>/<task>/{train800,val200,train800val200,test}.txt``), ``fewshot``
(NOAH's ``annotations/train_meta.list.num_shot_K.seed_S`` + ``test_meta.list``) and ``folder``
(``<root>/{train,val,test}/<class>/<image>``). All faults raise :class:`DataError` naming the
file and line, or the option, and what was expected.
"""
from .errors import DataError, DataWarning
from .fingerprint import compare_fingerprints, content_fingerprint, describe_changes
from .loader import KINDS, PROTOCOLS, TaskData, load_task
from .manifest import manifest_hash
from .tasks import FEWSHOT_DATASETS, VTAB_GROUPS, VTAB_TASKS, canonical_task
from .transforms import NORMALIZATIONS, build_transform
from .verify import format_verify_report, verify

__all__ = [
    "DataError", "DataWarning", "FEWSHOT_DATASETS", "KINDS", "NORMALIZATIONS", "PROTOCOLS", "TaskData",
    "VTAB_GROUPS", "VTAB_TASKS", "build_transform", "canonical_task", "compare_fingerprints", "content_fingerprint",
    "describe_changes", "format_verify_report", "load_task", "manifest_hash", "verify",
]
