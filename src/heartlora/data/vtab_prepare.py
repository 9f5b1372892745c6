"""Build VTAB-1K from TensorFlow Datasets with the benchmark's own splits and labels.

``prepare_vtab(out, tasks, tfds_dir, manual_dir, image_format)`` writes, for each task of the table
in :mod:`heartlora.data.vtab_source`, the folder heartlora's VTAB-1K reader and NOAH read::

    <out>/<task>/images/{train800,val200,test}/000000.png …
    <out>/<task>/{train800,val200,train800val200,test}.txt     lines "images/<split>/<file> <label>"
    <out>/<task>/classes.txt                                    one class name per label
    <out>/<task>/vtab_build.json                                how it was built (see below)

``train800val200.txt`` lists the train800 images, then the val200 images (the benchmark's
``train800val200`` is exactly those two slices joined). Images are the decoded TFDS tensors after
the benchmark's own conversion (greyscale tiled to RGB, dSprites' 0/1 pixels times 255), stored
as PNG (lossless: the same pixels the TFDS pipeline feeds a model) or, with ``image_format="jpeg"``,
as JPEG encoded like NOAH's ``get_vtab1k.py`` (Pillow's defaults, quality 75), for copies that
must match NOAH-style folders byte for byte.

``vtab_build.json`` records the TFDS builder, the version built and the version the source asks
for, the split expressions and sizes, the label rule, the image format, any difference from the
official sizes, and the data manifest and its hash (the hash ``heartlora data verify`` prints).

Resumable per task: a task is built in ``<out>/.<task>.partial-<pid>/`` and renamed into place
when complete, so ``<out>/<task>/`` exists only when finished. Run again after an interruption:
finished tasks are skipped, partial folders of dead processes are removed, the rest are built.
A folder that exists but was not built with the same options is never overwritten.

TensorFlow and TFDS are imported only when building (``pip install heartlora[vtab-data]``).
"""
from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..config import ConfigError
from ..fsio import atomic_write
from ..version import __version__
from .errors import DataError
from .tasks import VTAB_GROUPS, lookup_task, normalize_name, unknown_name_message
from .vtab_source import BUILT_SPLITS, SOURCE_COMMIT, SOURCE_REPO, VTAB_SOURCE, ClassLabel, Coarsened, VtabTaskSource

#: ``--format`` values -> image file suffix.
IMAGE_FORMATS: dict[str, str] = {"png": ".png", "jpeg": ".jpg"}
BUILD_FILE = "vtab_build.json"
BUILD_FORMAT = 1
EXTRA_HINT = "pip install heartlora[vtab-data]"
MADE_BY = "heartlora data prepare vtab"

# Outcome of one task.
BUILT, ALREADY_BUILT, NEEDS_DOWNLOAD, FAILED = "built", "already built", "needs download", "failed"
DONE_STATES = (BUILT, ALREADY_BUILT)

Log = Callable[[str], None]


class MissingExtra(ImportError):
    """TensorFlow or TensorFlow Datasets is not installed (the message says how to install them)."""


def import_tfds() -> Any:
    """``tensorflow_datasets``, or MissingExtra with the install hint."""
    # TensorFlow prints C++ start-up notices on import unless told otherwise; a user's setting wins.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow  # noqa: F401  (TFDS reads through tf.data)
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise MissingExtra(f"building VTAB-1K from the source needs TensorFlow and TensorFlow Datasets "
                           f"({err.name or err} is not installed): {EXTRA_HINT}") from None
    return tfds


# ----- options ---------------------------------------------------------------------------------------
def select_tasks(tasks: Sequence[str] | None) -> list[str]:
    """Canonical task names for ``--tasks``: names, aliases or group names (natural, specialized,
    structured); all 19 when empty. Unknown names raise ConfigError."""
    if not tasks:
        return list(VTAB_SOURCE)
    chosen: list[str] = []
    for name in tasks:
        group = normalize_name(name)
        if group in VTAB_GROUPS:
            chosen += VTAB_GROUPS[group]
            continue
        canonical = lookup_task(name, "vtab")
        if canonical is None:
            raise ConfigError(f"option '--tasks': {unknown_name_message(name, 'vtab')}, or a group: "
                              f"{', '.join(VTAB_GROUPS)}")
        chosen.append(canonical)
    return list(dict.fromkeys(chosen))


def _check_options(out: Path, image_format: str, tfds_dir: str | os.PathLike | None,
                   manual_dir: str | os.PathLike | None, max_examples: Mapping[str, int] | None) -> None:
    if image_format not in IMAGE_FORMATS:
        raise ConfigError(f"option '--format': expected one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"option '--out': {out} exists and is not a folder")
    if tfds_dir is not None and Path(tfds_dir).exists() and not Path(tfds_dir).is_dir():
        raise ConfigError(f"option '--tfds-dir': {tfds_dir} exists and is not a folder")
    if manual_dir is not None and not Path(manual_dir).is_dir():
        raise ConfigError(f"option '--manual-dir': {manual_dir} is not a folder; expected the folder holding "
                          "the manually downloaded files (e.g. <DIR>/resisc45/NWPU-RESISC45/)")
    for split, limit in (max_examples or {}).items():
        if split not in BUILT_SPLITS or not isinstance(limit, int) or limit < 1:
            raise ConfigError(f"max_examples: {split!r}: {limit!r}; expected split names among "
                              f"{', '.join(BUILT_SPLITS)} with integers >= 1")


# ----- images ----------------------------------------------------------------------------------------
def pipeline_image(row: VtabTaskSource, image: np.ndarray) -> np.ndarray:
    """The image as the benchmark's pipeline hands it on: greyscale tiled to three channels
    (``tf.tile(image, [1, 1, 3])``), then multiplied by ``pixel_scale`` in uint8 (dSprites: 0/1 → 0/255)."""
    if row.gray_to_rgb:
        image = np.tile(image, (1, 1, 3))
    if row.pixel_scale != 1:
        image = image * np.uint8(row.pixel_scale)
    return image


def encode_image(image: np.ndarray, image_format: str) -> bytes:
    """PNG (lossless) or JPEG (Pillow's defaults, as NOAH's ``get_vtab1k.py`` saves) bytes of a uint8 image."""
    from PIL import Image

    array = np.ascontiguousarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise DataError(f"image of shape {list(array.shape)} and type {array.dtype}; expected uint8 HxW, HxWx1 or HxWx3")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG" if image_format == "png" else "JPEG")
    return buffer.getvalue()


# ----- one task --------------------------------------------------------------------------------------
@dataclass
class TaskOutcome:
    """What happened to one task: ``status`` (built, already built, needs download, failed), a
    one-line ``message`` for the last two, and the task's build record when it is done."""

    task: str
    status: str
    message: str = ""
    record: dict | None = None


def read_build_record(folder: Path) -> dict | None:
    """``folder/vtab_build.json`` when it is one this builder wrote, else None."""
    path = folder / BUILD_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) and record.get("made_by") == MADE_BY else None


def _request(row: VtabTaskSource, image_format: str, max_examples: Mapping[str, int] | None) -> dict:
    """The options that make a build: a finished task is reused only when these are equal."""
    return {"tfds_name": row.tfds_name, "tfds_version": row.version, "image_format": image_format,
            "max_examples": dict(sorted(max_examples.items())) if max_examples else None}


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _clear_partials(out: Path, task: str) -> int | None:
    """Remove ``.<task>.partial-<pid>`` folders of processes that died; the pid of a live one, if any."""
    for path in sorted(out.glob(f".{task}.partial-*")):
        pid = path.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and path.is_dir()):
            continue
        if int(pid) != os.getpid() and _process_alive(int(pid)):
            return int(pid)
        shutil.rmtree(path)
    return None


def _manual_message(row: VtabTaskSource, manual_dir: str | os.PathLike | None) -> str | None:
    """Why a task that needs hand-downloaded files cannot be prepared now (None: they are there)."""
    manual = row.manual
    if manual is None:
        return None
    if manual_dir is None:
        return (f"TFDS cannot download {row.tfds_name} itself. Download {manual.instructions}; put it into "
                f"DIR/{manual.folder}/ and pass --manual-dir DIR")
    folder = Path(manual_dir) / manual.folder
    missing = [name for name in manual.required if not (folder / name).exists()]
    if not missing:
        return None
    return (f"TFDS cannot download {row.tfds_name} itself; {folder} lacks {', '.join(missing)}. "
            f"Download {manual.instructions}; put it into {folder}/")


def _class_names(row: VtabTaskSource, features: Any) -> list[str]:
    """Class names for classes.txt, after checking the TFDS label feature has the expected size."""
    tfds_names = None
    rule = row.label
    if isinstance(rule, (ClassLabel, Coarsened)):
        feature = features[rule.feature]
        expected = row.classes if isinstance(rule, ClassLabel) else rule.original
        if feature.num_classes != expected:
            raise DataError(f"task {row.task}: TFDS {row.tfds_name} {row.version} feature '{rule.feature}' has "
                            f"{feature.num_classes} classes; expected {expected}")
        tfds_names = feature.names if isinstance(rule, ClassLabel) else None
    names = [" ".join(str(name).split()) for name in rule.class_names(row.classes, tfds_names)]
    if len(set(names)) != len(names) or not all(names):
        names = [str(c) for c in range(row.classes)]
    return names


def _write_split(row: VtabTaskSource, examples: Iterable[Mapping[str, Any]], split: str, expression: str,
                 staging: Path, image_format: str) -> list[str]:
    """Write one split's images; its list lines."""
    suffix = IMAGE_FORMATS[image_format]
    (staging / "images" / split).mkdir(parents=True)
    lines = []
    for index, example in enumerate(examples):
        label = row.label.label(example, row.classes)
        if not 0 <= label < row.classes:
            raise DataError(f"task {row.task}: example {index} of {split} (TFDS '{expression}') gets label {label}; "
                            f"expected 0..{row.classes - 1} ({row.label.describe()})")
        name = f"images/{split}/{index:06d}{suffix}"
        (staging / name).write_bytes(encode_image(pipeline_image(row, example[row.image]), image_format))
        lines.append(f"{name} {label}")
    return lines


def _describe_request(request: dict) -> str:
    limited = f", only {request['max_examples']}" if request.get("max_examples") else ""
    return f"{request.get('image_format')} images from TFDS {request.get('tfds_name')} {request.get('tfds_version')}{limited}"


def _existing(final: Path, request: dict) -> TaskOutcome | None:
    """The outcome for a task whose folder exists already (None: it does not)."""
    if not final.exists():
        return None
    record = read_build_record(final)
    if record is not None and record.get("request") == request:
        return TaskOutcome(final.name, ALREADY_BUILT, record=record)
    what = (f"another build ({_describe_request(record.get('request') or {})})" if record is not None
            else f"no {BUILD_FILE} of this builder")
    return TaskOutcome(final.name, FAILED, f"{final} exists and holds {what}; remove it or choose another --out "
                                           "(it is never overwritten)")


def _download_and_prepare(tfds: Any, builder: Any, row: VtabTaskSource, manual_dir: str | os.PathLike | None,
                          say: Log) -> None:
    say(f"{row.task}: downloading and preparing TFDS {row.tfds_name} {row.version} into {builder.data_dir}")
    config = {} if row.manual is None else {"manual_dir": str(Path(manual_dir) / row.manual.folder)}
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(**config))


@dataclass
class _Plan:
    """What one task reads: TFDS split sizes, the expression of each built split, how many examples
    each yields (TFDS's metadata), and where those differ from the benchmark's sizes."""

    tfds_sizes: dict[str, int]
    expressions: dict[str, str]
    sizes: dict[str, int]
    deviations: list[str]


def _plan(row: VtabTaskSource, builder: Any) -> _Plan:
    info = builder.info
    tfds_sizes = {name: split.num_examples for name, split in info.splits.items()}
    absent = sorted({part.split for part in row.slices().values()} - set(tfds_sizes))
    if absent:
        raise DataError(f"task {row.task}: TFDS {row.tfds_name} {builder.version} has no split '{absent[0]}' "
                        f"(it has: {', '.join(tfds_sizes) or 'none'})")
    expressions = {split: part.expression(tfds_sizes) for split, part in row.slices().items()}
    sizes = {split: info.splits[expression].num_examples for split, expression in expressions.items()}
    official = row.expected_sizes()
    deviations = [f"{split} '{expressions[split]}' has {sizes[split]:,} examples in TFDS {row.tfds_name} "
                  f"{builder.version}, the benchmark {official[split]:,}"
                  for split in BUILT_SPLITS if sizes[split] != official[split]]
    return _Plan(tfds_sizes, expressions, sizes, deviations)


def _write_lists(tfds: Any, row: VtabTaskSource, builder: Any, plan: _Plan, staging: Path, image_format: str,
                 max_examples: Mapping[str, int] | None, say: Log) -> dict[str, list[str]]:
    """Every split's images and list lines into ``staging``, and classes.txt; the lines by split."""
    class_names = _class_names(row, builder.info.features)
    lists: dict[str, list[str]] = {}
    for split in BUILT_SPLITS:
        expression, want = plan.expressions[split], plan.sizes[split]
        dataset = builder.as_dataset(split=expression, shuffle_files=False)
        limit = (max_examples or {}).get(split)
        if limit is not None:
            dataset, want = dataset.take(limit), min(limit, want)
        lists[split] = _write_split(row, tfds.as_numpy(dataset), split, expression, staging, image_format)
        if len(lists[split]) != want:
            raise DataError(f"task {row.task}: TFDS gave {len(lists[split])} examples for '{expression}', its "
                            f"metadata says {want}; the prepared data under {builder.data_dir} looks incomplete "
                            "(delete that folder to prepare it again)")
        say(f"{row.task}: {split}: {len(lists[split])} images from TFDS '{expression}'")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        atomic_write(staging / f"{split}.txt", ("\n".join(lines) + "\n").encode("utf-8"))
    atomic_write(staging / "classes.txt", ("\n".join(class_names) + "\n").encode("utf-8"))
    return lists


def _build_record(tfds: Any, row: VtabTaskSource, builder: Any, plan: _Plan, request: dict,
                  lists: dict[str, list[str]], report: dict) -> dict:
    splits = {split: {"expression": plan.expressions[split], "examples": len(lists[split])} for split in BUILT_SPLITS}
    splits["train800val200"] = {"expression": f"{plan.expressions['train800']}+{plan.expressions['val200']}",
                                "examples": len(lists["train800val200"])}
    return {
        "format": BUILD_FORMAT, "made_by": MADE_BY, "heartlora": __version__, "request": request,
        "task": row.task, "group": row.group, "classes": row.classes,
        "source": {"repository": SOURCE_REPO, "commit": SOURCE_COMMIT, "file": f"task_adaptation/data/{row.source_file}",
                   "version_asked": row.source_version, "note": row.note},
        "tfds": {"name": row.tfds_name, "version": str(builder.version), "package": tfds.__version__,
                 "split_sizes": plan.tfds_sizes},
        "label_rule": row.label.describe(),
        "image": {"format": request["image_format"], "gray_to_rgb": row.gray_to_rgb, "pixel_scale": row.pixel_scale},
        "splits": splits,
        "official_sizes": row.expected_sizes(),
        "deviations": plan.deviations,  # TFDS's sizes that differ from the benchmark's
        "is_vtab_1k": not plan.deviations and not request["max_examples"],
        "manifest": report["manifest"],
        "manifest_hash": report["manifest_hash"],
    }


def _build_task(tfds: Any, row: VtabTaskSource, out: Path, tfds_dir: str | os.PathLike | None,
                manual_dir: str | os.PathLike | None, image_format: str, max_examples: Mapping[str, int] | None,
                say: Log) -> TaskOutcome:
    from .verify import verify

    request = _request(row, image_format, max_examples)
    final = out / row.task
    existing = _existing(final, request)
    if existing is not None:
        return existing
    live = _clear_partials(out, row.task)
    if live is not None:
        return TaskOutcome(row.task, FAILED, f"process {live} is building it into {out}/.{row.task}.partial-{live}/")
    builder = tfds.builder(f"{row.tfds_name}:{row.version}", data_dir=None if tfds_dir is None else str(tfds_dir))
    if not builder.is_prepared():
        missing = _manual_message(row, manual_dir)
        if missing is not None:
            return TaskOutcome(row.task, NEEDS_DOWNLOAD, missing)
        _download_and_prepare(tfds, builder, row, manual_dir, say)
    plan = _plan(row, builder)
    staging = out / f".{row.task}.partial-{os.getpid()}"
    staging.mkdir(parents=True)
    try:
        lists = _write_lists(tfds, row, builder, plan, staging, image_format, max_examples, say)
        report = verify("vtab", str(staging), row.task, check_images=False)
        if not report["ok"]:
            raise DataError(f"task {row.task}: the written lists fail verify: {report['problems'][0]['message']}")
        record = _build_record(tfds, row, builder, plan, request, lists, report)
        atomic_write(staging / BUILD_FILE, (json.dumps(record, indent=2) + "\n").encode("utf-8"))
        if final.exists():
            raise DataError(f"{final} appeared while this task was being built; left it as it is")
        os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return TaskOutcome(row.task, BUILT, record=record)


# ----- all tasks -------------------------------------------------------------------------------------
@dataclass
class PrepareReport:
    """Every task's outcome; ``ok`` when all are built (now or before)."""

    out: Path
    image_format: str
    max_examples: Mapping[str, int] | None = None
    outcomes: list[TaskOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(outcome.status in DONE_STATES for outcome in self.outcomes)


_MESSAGE_CHARS = 600  # TFDS and download errors can run to pages; the summary keeps one line per task


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    text = text if len(text) <= _MESSAGE_CHARS else text[:_MESSAGE_CHARS] + " …"
    return text if isinstance(err, (DataError, OSError)) else f"{type(err).__name__}: {text}"


def prepare_vtab(out: str | os.PathLike, tasks: Sequence[str] | None = None, tfds_dir: str | os.PathLike | None = None,
                 manual_dir: str | os.PathLike | None = None, image_format: str = "png", *,
                 max_examples: Mapping[str, int] | None = None, log: Log | None = None) -> PrepareReport:
    """Build VTAB-1K task folders under ``out`` from TensorFlow Datasets (see the module doc).

    - ``out`` (path, ``--out``): the data root; ``<out>/<task>/`` is written per task.
    - ``tasks`` (names, ``--tasks``, default all 19): canonical names, aliases (``cifar100``) or
      groups (``natural``, ``specialized``, ``structured``).
    - ``tfds_dir`` (path, ``--tfds-dir``, default TFDS's own: ``$TFDS_DATA_DIR`` or
      ``~/tensorflow_datasets``): where TFDS downloads and prepares the source datasets; datasets
      already prepared there are not downloaded again.
    - ``manual_dir`` (path, ``--manual-dir``, default none): holds the files TFDS cannot download,
      one sub-folder per dataset (``resisc45/``, ``diabetic_retinopathy_detection/``). Without
      them those tasks end as "needs download" with what to fetch; the others still build.
    - ``image_format`` (``--format``, ``png`` default): ``png`` lossless; ``jpeg`` as NOAH's copies.
    - ``max_examples`` (tests and quick looks only; not a CLI option): write only the first ``n``
      examples of the named splits (``{"train800": 8, "test": 5}``); recorded in the build record
      (``is_vtab_1k`` false), and ``heartlora data verify`` warns about the sizes.

    Each task is built on its own: a download, TFDS or data fault ends that task with a one-line
    message and the next task is built. Raises ConfigError for invalid options and MissingExtra
    when TensorFlow Datasets is not installed.
    """
    out = Path(out)
    chosen = select_tasks(tasks)
    _check_options(out, image_format, tfds_dir, manual_dir, max_examples)
    say = log or (lambda _: None)
    tfds = import_tfds()
    out.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(out, image_format, max_examples)
    for number, task in enumerate(chosen, start=1):
        row = VTAB_SOURCE[task]
        say(f"[{number}/{len(chosen)}] {task}: TFDS {row.tfds_name} {row.version}")
        try:
            outcome = _build_task(tfds, row, out, tfds_dir, manual_dir, image_format, max_examples, say)
        except Exception as err:  # any fault of one task's download, TFDS reading or data ends that task only
            outcome = TaskOutcome(task, FAILED, _one_line(err))
        say(f"[{number}/{len(chosen)}] {task}: {outcome.status}" + (f": {outcome.message}" if outcome.message else ""))
        report.outcomes.append(outcome)
    return report


def format_prepare_report(report: PrepareReport) -> str:
    """A table of the tasks (status, split sizes, manifest hash), then what to do for those not built."""
    limited = f"; only the first {dict(report.max_examples)} examples per split: not VTAB-1K" if report.max_examples else ""
    lines = [f"VTAB-1K from TensorFlow Datasets in {report.out} ({report.image_format}{limited}):",
             f"  {'task':<22}{'status':<16}{'train800':>9}{'val200':>8}{'test':>8}  manifest hash"]
    for outcome in report.outcomes:
        record = outcome.record
        if record is not None:
            sizes = record["splits"]
            lines.append(f"  {outcome.task:<22}{outcome.status:<16}{sizes['train800']['examples']:>9}"
                         f"{sizes['val200']['examples']:>8}{sizes['test']['examples']:>8}  {record['manifest_hash'][:16]}…")
        else:
            lines.append(f"  {outcome.task:<22}{outcome.status:<16}{'-':>9}{'-':>8}{'-':>8}")
    for status, title in ((NEEDS_DOWNLOAD, "to download by hand"), (FAILED, "failed")):
        items = [outcome for outcome in report.outcomes if outcome.status == status]
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines += [f"  {outcome.task}: {outcome.message}" for outcome in items]
    differing = [(outcome.task, text) for outcome in report.outcomes if outcome.record
                 for text in outcome.record["deviations"]]
    if differing:
        lines.append(f"differences from the official VTAB-1K ({len(differing)}):")
        lines += [f"  {task}: {text}" for task, text in differing]
    notes = [(outcome.task, VTAB_SOURCE[outcome.task].note) for outcome in report.outcomes
             if outcome.record and VTAB_SOURCE[outcome.task].note]
    if notes:
        lines.append("notes:")
        lines += [f"  {task}: {note}" for task, note in notes]
    done = [outcome.task for outcome in report.outcomes if outcome.status in DONE_STATES]
    lines.append(f"done: {len(done)} of {len(report.outcomes)} tasks"
                 + (f"; check one: heartlora data verify {report.out} --task {done[0]}" if done else ""))
    return "\n".join(lines)


def run_prepare_vtab(out: str | os.PathLike, tasks: Sequence[str] | None = None,
                     tfds_dir: str | os.PathLike | None = None, manual_dir: str | os.PathLike | None = None,
                     image_format: str = "png", log: Log | None = None) -> tuple[str, int]:
    """``heartlora data prepare vtab``: (printable summary, exit status). The status is 0 when
    every task is built (now or before), 1 when some are not (or TFDS is not installed: the text
    says how to install it). Invalid options raise ConfigError (a usage error). The arguments are
    those of :func:`prepare_vtab`."""
    try:
        report = prepare_vtab(out, tasks, tfds_dir, manual_dir, image_format, log=log)
    except MissingExtra as err:
        return f"error: {err}", 1
    return format_prepare_report(report), 0 if report.ok else 1
