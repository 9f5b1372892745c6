"""VTAB-1K from the source: the 19-row table, its label rules, and the builder under TFDS mock data.

Offline: nothing is downloaded. The builder runs on ``tfds.testing.mock_data`` with each source
dataset's real TFDS split sizes written as metadata (so the split expressions are computed from
the real sizes), and examples made here: random pixels of each dataset's own feature shapes, with
3-9 objects per CLEVR / KITTI scene at realistic depths, so that every label rule meets valid and
varied input. Only the first few examples of each split are written (``max_examples``).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from heartlora.config import ConfigError
from heartlora.data.images import load_image
from heartlora.data.tasks import VTAB_GROUPS, VTAB_TASKS
from heartlora.data.verify import format_verify_report, verify
from heartlora.data import vtab_prepare
from heartlora.data.vtab_prepare import (
    ALREADY_BUILT, BUILD_FILE, BUILT, FAILED, NEEDS_DOWNLOAD, prepare_vtab, run_prepare_vtab, select_tasks,
)
from heartlora.data.vtab_source import (
    BUILT_SPLITS, VTAB_SOURCE, VTAB_SOURCES, ClassLabel, Coarsened, ObjectCount, expected_split_sizes,
)

# The TFDS catalog's split sizes of the source datasets (the versions the table builds).
TFDS_SPLIT_SIZES = {
    "cifar100": {"train": 50_000, "test": 10_000},
    "caltech101": {"train": 3_060, "test": 6_084},
    "dtd": {"train": 1_880, "validation": 1_880, "test": 1_880},
    "oxford_flowers102": {"train": 1_020, "validation": 1_020, "test": 6_149},
    "oxford_iiit_pet": {"train": 3_680, "test": 3_669},
    "svhn_cropped": {"train": 73_257, "test": 26_032, "extra": 531_131},
    "sun397/tfds": {"train": 76_128, "validation": 10_875, "test": 21_750},
    "patch_camelyon": {"train": 262_144, "validation": 32_768, "test": 32_768},
    "eurosat/rgb": {"train": 27_000},
    "resisc45": {"train": 31_500},
    "diabetic_retinopathy_detection/btgraham-300": {"sample": 10, "train": 35_126, "validation": 10_906,
                                                    "test": 42_670},
    "clevr": {"train": 70_000, "validation": 15_000, "test": 15_000},
    "dmlab": {"train": 65_550, "validation": 22_628, "test": 22_735},
    "kitti": {"train": 6_347, "validation": 423, "test": 711},
    "dsprites": {"train": 737_280},
    "smallnorb": {"train": 24_300, "test": 24_300},
}

# (train800, val200, test) as task_adaptation's data classes write them for these sizes, by hand:
# e.g. CIFAR's val200 starts at 90% of 50,000; EuroSAT's test at 60% + 20% of 27,000.
SOURCE_EXPRESSIONS = {
    "cifar": ("train[:800]", "train[45000:45200]", "test"),
    "caltech101": ("train[:800]", "train[2754:2954]", "test"),
    "dtd": ("train[:800]", "validation[:200]", "test"),
    "oxford_flowers102": ("train[:800]", "validation[:200]", "test"),
    "oxford_iiit_pet": ("train[:800]", "train[2944:3144]", "test"),
    "svhn": ("train[:800]", "train[65931:66131]", "test"),
    "sun397": ("train[:800]", "validation[:200]", "test"),
    "patch_camelyon": ("train[:800]", "validation[:200]", "test"),
    "eurosat": ("train[:800]", "train[16200:16400]", "train[21600:]"),
    "resisc45": ("train[:800]", "train[18900:19100]", "train[25200:]"),
    "diabetic_retinopathy": ("train[:800]", "validation[:200]", "test"),
    "clevr_count": ("train[:800]", "train[63000:63200]", "validation"),
    "clevr_dist": ("train[:800]", "train[63000:63200]", "validation"),
    "dmlab": ("train[:800]", "validation[:200]", "test"),
    "kitti": ("train[:800]", "validation[:200]", "test"),
    "dsprites_loc": ("train[:800]", "train[589824:590024]", "train[663552:]"),
    "dsprites_ori": ("train[:800]", "train[589824:590024]", "train[663552:]"),
    "smallnorb_azi": ("train[:800]", "test[:200]", "test[50%:]"),
    "smallnorb_ele": ("train[:800]", "test[:200]", "test[50%:]"),
}


def _objects(**fields) -> dict:
    return {name: np.asarray(values) for name, values in fields.items()}


def _clevr(depths) -> dict:
    return {"objects": _objects(size=np.zeros(len(depths), np.int64),
                                pixel_coords=[[10.0, 20.0, d] for d in depths])}


def _kitti(*objects) -> dict:
    return {"objects": _objects(type=np.asarray([t for t, _ in objects], np.int64).reshape(-1),
                                location=np.asarray([[1.0, 2.0, z] for _, z in objects], np.float32).reshape(-1, 3))}


# (task, example, label) worked out by hand from the source's rules; every task at least once.
LABEL_CASES = [
    ("cifar", {"label": 42}, 42), ("caltech101", {"label": 101}, 101), ("dtd", {"label": 0}, 0),
    ("oxford_flowers102", {"label": 7}, 7), ("oxford_iiit_pet", {"label": 36}, 36), ("svhn", {"label": 9}, 9),
    ("sun397", {"label": 396}, 396), ("patch_camelyon", {"label": 1}, 1), ("eurosat", {"label": 3}, 3),
    ("resisc45", {"label": 44}, 44), ("diabetic_retinopathy", {"label": 4}, 4), ("dmlab", {"label": 5}, 5),
    ("smallnorb_azi", {"label_azimuth": 17}, 17), ("smallnorb_ele", {"label_elevation": 8}, 8),
    # CLEVR count: objects - 3 (3 objects -> 0, 10 objects -> 7)
    ("clevr_count", _clevr([9.0] * 3), 0), ("clevr_count", _clevr([9.0] * 6), 3), ("clevr_count", _clevr([9.0] * 10), 7),
    # CLEVR distance: nearest depth, bins at 0 / 8 / 8.5 / 9 / 9.5 / 10 / 100 (upper bounds inclusive)
    ("clevr_dist", _clevr([7.9]), 0), ("clevr_dist", _clevr([8.0]), 0), ("clevr_dist", _clevr([8.01]), 1),
    ("clevr_dist", _clevr([12.0, 8.7, 30.0]), 2), ("clevr_dist", _clevr([9.2]), 3), ("clevr_dist", _clevr([9.5]), 3),
    ("clevr_dist", _clevr([9.75]), 4), ("clevr_dist", _clevr([10.5, 60.0]), 5),
    ("clevr_dist", _clevr([150.0]), 6),  # beyond the last bin: out of range, the builder refuses it
    ("clevr_dist", _clevr([0.0]), -1),   # no bin at all: refused too
    # KITTI: nearest Car/Van/Truck (types 0-2) depth, bins at -100 / 8 / 20 / 999; none -> 1000 -> class 3
    ("kitti", _kitti((0, 7.0)), 0), ("kitti", _kitti((1, 8.0)), 0), ("kitti", _kitti((3, 5.0), (0, 15.0)), 1),
    ("kitti", _kitti((2, 25.0), (2, 40.0)), 2), ("kitti", _kitti((3, 5.0), (5, 2.0)), 3), ("kitti", _kitti(), 3),
    # dSprites: 32 x positions / 40 orientations into 16 classes
    ("dsprites_loc", {"label_x_position": 0}, 0), ("dsprites_loc", {"label_x_position": 1}, 0),
    ("dsprites_loc", {"label_x_position": 2}, 1), ("dsprites_loc", {"label_x_position": 31}, 15),
    ("dsprites_ori", {"label_orientation": 2}, 0), ("dsprites_ori", {"label_orientation": 3}, 1),
    ("dsprites_ori", {"label_orientation": 5}, 2), ("dsprites_ori", {"label_orientation": 39}, 15),
]


# ----- the table ----------------------------------------------------------------------------------
def test_table_is_heartlora_vtab_registry():
    assert [row.task for row in VTAB_SOURCES] == [t for group in VTAB_GROUPS.values() for t in group]
    assert {row.task: row.classes for row in VTAB_SOURCES} == VTAB_TASKS
    for row in VTAB_SOURCES:
        assert {part.split for part in row.slices().values()} <= set(TFDS_SPLIT_SIZES[row.tfds_name]), row.task
        assert row.group in VTAB_GROUPS
    assert set(SOURCE_EXPRESSIONS) == set(VTAB_SOURCE)


def _slice_size(expression: str, sizes: dict) -> int:
    """Examples an expression selects (TFDS rounds percent boundaries to the closest example)."""
    match = re.fullmatch(r"(\w+)(?:\[(\d*)(%?):(\d*)\])?", expression)
    split, start, percent, stop = match.groups()
    n = sizes[split]
    first = 0 if not start else round(int(start) * n / 100) if percent else int(start)
    return (int(stop) if stop else n) - first


@pytest.mark.parametrize("task", list(VTAB_SOURCE))
def test_split_expressions_are_the_sources_and_give_the_official_sizes(task):
    row = VTAB_SOURCE[task]
    sizes = TFDS_SPLIT_SIZES[row.tfds_name]
    expressions = tuple(part.expression(sizes) for part in row.slices().values())
    assert expressions == SOURCE_EXPRESSIONS[task]
    official = row.expected_sizes()
    assert {split: _slice_size(e, sizes) for split, e in zip(BUILT_SPLITS, expressions)} == \
        {split: official[split] for split in BUILT_SPLITS}
    assert official["train800val200"] == 1000 and expected_split_sizes(task) == official
    assert expected_split_sizes("my_own_task") is None


@pytest.mark.parametrize("task,example,label", LABEL_CASES)
def test_label_rules_on_hand_computed_examples(task, example, label):
    row = VTAB_SOURCE[task]
    assert row.label.label(example, row.classes) == label


def test_every_label_rule_has_a_hand_computed_case_and_class_names():
    assert {task for task, _, _ in LABEL_CASES} == set(VTAB_SOURCE)
    for row in VTAB_SOURCES:
        names = row.label.class_names(row.classes, None)
        assert len(names) == len(set(names)) == row.classes, row.task
    assert VTAB_SOURCE["clevr_count"].label.class_names(8, None)[0] == "3 objects"
    assert VTAB_SOURCE["dsprites_ori"].label.class_names(16, None)[:2] == ["label_orientation 0-2", "label_orientation 3-4"]
    assert VTAB_SOURCE["kitti"].label.class_names(4, None)[-1] == "depth > 999"


# ----- the label rules against the source's own TensorFlow formulas ---------------------------------
@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow

    return tensorflow


def source_label(tf, row, example) -> int:
    """The label as task_adaptation's TensorFlow code computes it (our reading of each formula)."""
    rule = row.label
    if isinstance(rule, ClassLabel):
        return int(example[rule.feature])
    if isinstance(rule, Coarsened):  # dsprites.py:65, 99-102: floor division in float32
        factor = float(rule.original) / row.classes
        return int(tf.cast(tf.math.floordiv(tf.cast(example[rule.feature], tf.float32), factor), tf.int64))
    objects = example["objects"]
    if isinstance(rule, ObjectCount):  # clevr.py:34
        return int(tf.size(objects["size"])) - 3
    if row.task == "clevr_dist":  # clevr.py:46-51
        dist = tf.reduce_min(tf.constant(objects["pixel_coords"], tf.float32)[:, 2])
        return int(tf.reduce_max(tf.where((np.array([0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0]) - dist) < 0)))
    assert row.task == "kitti"  # kitti.py:95-102
    vehicles = tf.where(tf.constant(objects["type"]) < 3)
    depth = tf.gather(params=tf.constant(objects["location"], tf.float32)[:, 2], indices=vehicles)
    depth = tf.concat([depth, tf.constant([[1000.0]])], axis=0)
    return int(tf.reduce_max(tf.where((np.array([-100.0, 8.0, 20.0, 999.0]) - tf.reduce_min(depth)) < 0)))


def test_label_rules_equal_the_source_formulas(tf):
    rng = np.random.default_rng(0)
    for task, feature, values in (("dsprites_loc", "label_x_position", 32), ("dsprites_ori", "label_orientation", 40)):
        row = VTAB_SOURCE[task]
        for value in range(values):  # every value the feature has
            example = {feature: np.int64(value)}
            assert row.label.label(example, row.classes) == source_label(tf, row, example), (task, value)
    for _ in range(150):
        n = int(rng.integers(3, 11))
        clevr = _clevr(rng.choice([7.9, 8.0, 8.25, 8.5, 9.0, 9.3, 9.5, 10.0, 12.0, 99.0], n) + rng.normal(0, 0.01, n))
        kitti = _kitti(*zip(rng.integers(0, 8, n), rng.uniform(-5, 60, n)))
        for task, example in (("clevr_count", clevr), ("clevr_dist", clevr), ("kitti", kitti)):
            row = VTAB_SOURCE[task]
            assert row.label.label(example, row.classes) == source_label(tf, row, example), (task, example)


# ----- TFDS under mock data ---------------------------------------------------------------------------
MOCK_EXAMPLES = 4  # examples every mocked split yields (the same ones: the mock ignores the slice)
LIMITS = {"train800": 3, "val200": 2, "test": 2}


@lru_cache(maxsize=None)
def fake_examples(full_name: str) -> tuple[dict, ...]:
    """The examples every split of dataset ``full_name`` yields under the mock (deterministic)."""
    from tensorflow_datasets.testing.mocking import RandomFakeGenerator

    features = _features[full_name]
    examples = []
    for index in range(MOCK_EXAMPLES):
        example = next(iter(RandomFakeGenerator(features, 1, constant_dynamic_shape=True, seed=index)))
        rng = np.random.default_rng(index)
        count = 3 + 2 * index  # CLEVR shows 3-10 objects: 3, 5, 7, 9 here
        for key, value in list(example.items()):
            if isinstance(value, dict) and key in ("objects", "question_answer"):  # CLEVR's and KITTI's sequences
                value = {name: array[:count] for name, array in value.items()}
                if "pixel_coords" in value:
                    value["pixel_coords"][:, 2] = rng.uniform(7.6, 10.4, count)
                if "location" in value:
                    value["location"][:, 2] = rng.uniform(1.0, 30.0, count)
                example[key] = value
        examples.append(example)
    return tuple(examples)


_features: dict = {}


def _fake_as_dataset(self, split, decoders=None, read_config=None, **kwargs):
    import tensorflow as tf

    _features[self.info.full_name] = self.info.features
    examples = fake_examples(self.info.full_name)
    signature = tf.nest.map_structure(lambda info: tf.TensorSpec(info.shape, info.tf_dtype),
                                      self.info.features.get_tensor_info())
    return tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)


def write_metadata(tfds, root: Path, names, sizes: dict | None = None) -> Path:
    """TFDS metadata (features, split sizes: the real ones unless ``sizes`` says otherwise) of
    ``builder:version`` names, as mock_data reads it."""
    for name in names:
        with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE):
            info = tfds.builder(name).info
        info.set_splits(tfds.core.SplitDict([
            tfds.core.SplitInfo(name=split, shard_lengths=[n], num_bytes=0, filename_template=tfds.core.ShardedFileTemplate(
                data_dir=str(root), template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}", dataset_name=info.name,
                split=split, filetype_suffix="tfrecord"))
            for split, n in (sizes or TFDS_SPLIT_SIZES[name.split(":")[0]]).items()]))
        folder = root.joinpath(*info.full_name.split("/"))
        folder.mkdir(parents=True, exist_ok=True)
        info.write_to_directory(str(folder))
    return root


ALL_BUILDERS = sorted({f"{row.tfds_name}:{row.version}" for row in VTAB_SOURCES})


@pytest.fixture(scope="module")
def tfds(tf):
    import tensorflow_datasets

    return tensorflow_datasets


def test_every_row_matches_its_tfds_builder(tfds):
    """Each pinned version is one TFDS can build, the label features exist with the row's class
    counts, and exactly the datasets TFDS cannot download itself have manual instructions."""
    for row in VTAB_SOURCES:
        with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_CODE):
            builder = tfds.builder(f"{row.tfds_name}:{row.version}")
        assert str(builder.version) == row.version
        assert bool(builder.MANUAL_DOWNLOAD_INSTRUCTIONS) == (row.manual is not None), row.task
        features, rule = builder.info.features, row.label
        if isinstance(rule, ClassLabel):
            assert features[rule.feature].num_classes == row.classes, row.task
        elif isinstance(rule, Coarsened):
            assert features[rule.feature].num_classes == rule.original, row.task
        else:
            objects = features["objects"].feature
            assert {getattr(rule, "field", None), getattr(rule, "coords", None)} - {None} <= set(objects), row.task
            if getattr(rule, "only_types_below", None) is not None:
                assert objects["type"].names[:3] == ["Car", "Van", "Truck"]
        assert features[row.image].shape[-1] == (1 if row.gray_to_rgb else 3), row.task


@pytest.fixture(scope="module")
def metadata(tfds, tmp_path_factory) -> Path:
    return write_metadata(tfds, tmp_path_factory.mktemp("tfds-metadata"), ALL_BUILDERS)


def mocked(tfds, metadata_root: Path):
    return tfds.testing.mock_data(as_dataset_fn=_fake_as_dataset, data_dir=str(metadata_root))


@pytest.fixture(scope="module")
def built(tfds, metadata, tmp_path_factory):
    out = tmp_path_factory.mktemp("vtab") / "vtab-1k"
    with mocked(tfds, metadata):
        report = prepare_vtab(out, tfds_dir=tmp_path_factory.mktemp("tfds"), max_examples=LIMITS)
    return report, out


def _read_list(path: Path) -> list[tuple[str, int]]:
    return [(name, int(label)) for name, label in (line.rsplit(" ", 1) for line in path.read_text().splitlines())]


def test_all_19_tasks_build_with_their_splits_labels_and_images(built):
    report, out = built
    assert [(o.task, o.status) for o in report.outcomes] == [(row.task, BUILT) for row in VTAB_SOURCES]
    assert report.ok and not [p for p in out.iterdir() if p.name.startswith(".")]
    for row in VTAB_SOURCES:
        folder = out / row.task
        lists = {split: _read_list(folder / f"{split}.txt") for split in (*BUILT_SPLITS, "train800val200")}
        assert {split: len(lists[split]) for split in BUILT_SPLITS} == LIMITS
        assert lists["train800val200"] == lists["train800"] + lists["val200"]
        for split in BUILT_SPLITS:
            assert [name for name, _ in lists[split]] == [f"images/{split}/{i:06d}.png" for i in range(LIMITS[split])]
        labels = [label for entries in lists.values() for _, label in entries]
        assert all(0 <= label < row.classes for label in labels), row.task
        classes = (folder / "classes.txt").read_text().splitlines()
        assert len(classes) == len(set(classes)) == row.classes
        for name, _ in lists["train800val200"] + lists["test"]:
            assert load_image(folder / name).mode == "RGB"
        record = json.loads((folder / BUILD_FILE).read_text())
        assert tuple(record["splits"][s]["expression"] for s in BUILT_SPLITS) == SOURCE_EXPRESSIONS[row.task]
        assert record["tfds"]["version"] == row.version and record["tfds"]["split_sizes"] == TFDS_SPLIT_SIZES[row.tfds_name]
        assert record["deviations"] == [] and record["is_vtab_1k"] is False  # real sizes, but limited
        checked = verify("vtab", str(out), row.task)
        assert checked["ok"] and checked["manifest_hash"] == record["manifest_hash"]
        assert {w["kind"] for w in checked["warnings"]} == {"benchmark_size"} and len(checked["warnings"]) == 4
    assert [label for _, label in _read_list(out / "clevr_count" / "train800.txt")] == [0, 2, 4]


def test_pixels_and_labels_equal_the_source_pipeline(built, tf):
    _, out = built
    for row in VTAB_SOURCES:
        examples = fake_examples(f"{row.tfds_name}/{row.version}")
        for split in BUILT_SPLITS:
            for index, (name, label) in enumerate(_read_list(out / row.task / f"{split}.txt")):
                example = examples[index]
                assert label == source_label(tf, row, example), (row.task, split, index)
                image = tf.constant(example["image"])
                if row.task.startswith("smallnorb"):  # smallnorb.py:81
                    image = tf.tile(image, [1, 1, 3])
                if row.task.startswith("dsprites"):  # dsprites.py:98
                    image = tf.tile(image, [1, 1, 3]) * 255
                assert np.array_equal(np.asarray(Image.open(out / row.task / name)), image.numpy()), (row.task, name)


def test_jpeg_is_encoded_as_noah_encodes(tfds, metadata, tmp_path):
    with mocked(tfds, metadata):
        report = prepare_vtab(tmp_path / "jpeg", ["dsprites_ori", "dtd"], image_format="jpeg", max_examples=LIMITS)
    assert report.ok
    for task, full_name in (("dsprites_ori", "dsprites/2.0.0"), ("dtd", "dtd/3.0.1")):
        row = VTAB_SOURCE[task]
        names = [name for name, _ in _read_list(tmp_path / "jpeg" / task / "test.txt")]
        assert names == ["images/test/000000.jpg", "images/test/000001.jpg"]
        for index, name in enumerate(names):
            pixels = vtab_prepare.pipeline_image(row, fake_examples(full_name)[index]["image"])
            noah = io.BytesIO()
            Image.fromarray(pixels).save(noah, format="JPEG")  # get_vtab1k.py: Image.fromarray(image).save(path.jpg)
            assert (tmp_path / "jpeg" / task / name).read_bytes() == noah.getvalue()


def test_rerun_skips_finished_tasks(built, tfds, metadata, monkeypatch):
    _, out = built
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    monkeypatch.setattr(vtab_prepare, "encode_image", lambda *a: pytest.fail("a finished task was written again"))
    with mocked(tfds, metadata):
        report = prepare_vtab(out, max_examples=LIMITS)
        assert {o.status for o in report.outcomes} == {ALREADY_BUILT}
        text, status = run_prepare_vtab(out, ["natural"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # without max_examples it is another build: refused, not rewritten
    assert status == 1 and "exists and holds another build (png images from TFDS cifar100 3.0.2, only {" in text


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_killed_run_resumes(tfds, metadata, tmp_path, monkeypatch):
    out = tmp_path / "vtab"
    calls = {"n": 0}
    real_encode = vtab_prepare.encode_image

    def dies_on_the_ninth_image(image, image_format):
        calls["n"] += 1
        if calls["n"] == 9:  # dtd wrote 7 images; this is kitti's second
            raise KeyboardInterrupt
        return real_encode(image, image_format)

    tasks = ["dtd", "kitti", "smallnorb_ele"]
    with mocked(tfds, metadata):
        monkeypatch.setattr(vtab_prepare, "encode_image", dies_on_the_ninth_image)
        with pytest.raises(KeyboardInterrupt):
            prepare_vtab(out, tasks, max_examples=LIMITS)
        assert sorted(p.name for p in out.iterdir()) == ["dtd"]  # kitti left nothing that looks finished
        # a process killed outright leaves its partial folder; this one even holds a finished-looking task
        stale = out / f".kitti.partial-{_dead_pid()}"
        shutil.copytree(out / "dtd", stale)
        busy = out / f".smallnorb_ele.partial-{os.getppid()}"  # a live process is building this one
        busy.mkdir()
        monkeypatch.setattr(vtab_prepare, "encode_image", real_encode)
        report = prepare_vtab(out, tasks, max_examples=LIMITS)
        assert [(o.task, o.status) for o in report.outcomes] == [("dtd", ALREADY_BUILT), ("kitti", BUILT),
                                                                 ("smallnorb_ele", FAILED)]
        assert f"process {os.getppid()} is building it" in report.outcomes[2].message
        assert not stale.exists() and busy.exists()
        assert json.loads((out / "kitti" / BUILD_FILE).read_text())["task"] == "kitti"
        busy.rmdir()
        report = prepare_vtab(out, tasks, max_examples=LIMITS)
    assert [o.status for o in report.outcomes] == [ALREADY_BUILT, ALREADY_BUILT, BUILT]


def test_existing_folders_are_never_overwritten(built, tfds, metadata, tmp_path):
    _, out = built
    png = sorted(p.name for p in (out / "cifar" / "images" / "test").iterdir())
    foreign = tmp_path / "mine" / "dtd"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with mocked(tfds, metadata):
        other = prepare_vtab(out, ["cifar100"], image_format="jpeg", max_examples=LIMITS)
        mine = prepare_vtab(foreign.parent, ["dtd"], max_examples=LIMITS)
    assert other.outcomes[0].status == FAILED and "another build (png images" in other.outcomes[0].message
    assert sorted(p.name for p in (out / "cifar" / "images" / "test").iterdir()) == png
    assert mine.outcomes[0].status == FAILED and f"no {BUILD_FILE}" in mine.outcomes[0].message
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


def test_manual_download_tasks_say_what_to_fetch_and_the_rest_builds(tfds, tmp_path):
    metadata = write_metadata(tfds, tmp_path / "meta", ["dtd:3.0.1"])  # the manual datasets are not prepared
    manual = tmp_path / "manual"
    (manual / "resisc45").mkdir(parents=True)
    with mocked(tfds, metadata):
        report = prepare_vtab(tmp_path / "out", ["diabetic_retinopathy", "dtd", "resisc45"], manual_dir=manual,
                              max_examples=LIMITS)
        text, status = run_prepare_vtab(tmp_path / "out2", ["resisc45"])
    statuses = {o.task: o for o in report.outcomes}
    assert [o.status for o in report.outcomes] == [NEEDS_DOWNLOAD, BUILT, NEEDS_DOWNLOAD] and not report.ok
    retinopathy = statuses["diabetic_retinopathy"].message
    assert str(manual / "diabetic_retinopathy_detection") in retinopathy and "trainLabels.csv" in retinopathy
    assert "kaggle" in retinopathy.lower()
    assert "lacks NWPU-RESISC45" in statuses["resisc45"].message
    assert not (tmp_path / "out" / "resisc45").exists()
    assert status == 1 and "to download by hand (1):" in text and "pass --manual-dir DIR" in text


def test_tfds_sizes_that_differ_from_the_benchmark_are_reported(tfds, tmp_path):
    metadata = write_metadata(tfds, tmp_path / "meta", ["oxford_iiit_pet:4.0.0"], {"train": 3_680, "test": 3_668})
    with mocked(tfds, metadata):
        report = prepare_vtab(tmp_path / "out", ["pets"], max_examples=LIMITS)
    record = report.outcomes[0].record
    assert report.ok and record["is_vtab_1k"] is False
    assert record["deviations"] == ["test 'test' has 3,668 examples in TFDS oxford_iiit_pet 4.0.0, the benchmark 3,669"]
    text = vtab_prepare.format_prepare_report(report)
    assert "differences from the official VTAB-1K (1):" in text and "only the first" in text
    assert "oxford_iiit_pet: the source asks for 3.*.*" in text


def test_options_and_the_missing_extra(monkeypatch, tmp_path):
    assert select_tasks(None) == list(VTAB_SOURCE)
    assert select_tasks(["Specialized", "cifar100", "cifar", "kitti_distance"]) == [
        "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy", "cifar", "kitti"]
    with pytest.raises(ConfigError, match=r"option '--tasks': unknown VTAB-1K task 'cifra'.*did you mean 'cifar'"):
        select_tasks(["cifra"])
    with pytest.raises(ConfigError, match="option '--format': expected one of png, jpeg"):
        prepare_vtab(tmp_path, image_format="webp")
    with pytest.raises(ConfigError, match="option '--manual-dir'"):
        prepare_vtab(tmp_path, manual_dir=tmp_path / "absent")
    with pytest.raises(ConfigError, match="max_examples"):
        prepare_vtab(tmp_path, max_examples={"train": 3})
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    text, status = run_prepare_vtab(tmp_path / "out", ["dtd"])
    assert status == 1 and text.startswith("error: ") and text.endswith("pip install heartlora[vtab-data]")
    assert not (tmp_path / "out").exists()


def _write_lists(folder: Path, sizes: dict) -> None:
    folder.mkdir(parents=True)
    for split, n in sizes.items():
        (folder / f"{split}.txt").write_text("".join(f"images/{split}/{i:06d}.png {i % 4}\n" for i in range(n)))


def test_verify_knows_the_vtab_sizes(tmp_path):
    _write_lists(tmp_path / "kitti", VTAB_SOURCE["kitti"].expected_sizes())
    report = verify("vtab", str(tmp_path), "kitti", check_images=False)
    assert report["ok"] and report["warnings"] == []
    _write_lists(tmp_path / "other" / "kitti_distance", {"train800": 800, "val200": 200, "train800val200": 1000,
                                                          "test": 700})
    report = verify("vtab", str(tmp_path / "other"), "kitti", check_images=False)
    assert report["ok"] and [w["kind"] for w in report["warnings"]] == ["benchmark_size"]
    assert "700 samples; VTAB-1K's kitti test has 711" in format_verify_report(report)
    _write_lists(tmp_path / "own" / "shapes", {"train800": 10, "val200": 5, "train800val200": 15, "test": 7})
    (tmp_path / "own" / "shapes" / "classes.txt").write_text("a\nb\nc\nd\n")
    assert verify("vtab", str(tmp_path / "own"), "shapes", check_images=False)["warnings"] == []


def test_the_cli_command_builds_reports_and_refuses(tfds, tmp_path, capsys):
    from heartlora.cli import main

    metadata = write_metadata(tfds, tmp_path / "meta", ["dtd:3.0.1"])
    (tmp_path / "manual").mkdir()
    with mocked(tfds, metadata):
        code = main(["data", "prepare", "vtab", "--out", str(tmp_path / "out"), "--tasks", "resisc45",
                     "--manual-dir", str(tmp_path / "manual")])
    out, err = capsys.readouterr()
    assert code == 1 and "to download by hand (1):" in out and "Traceback" not in err, err
    assert main(["data", "prepare", "vtab", "--out", str(tmp_path / "o"), "--tasks", "no_such_task"]) == 2
    assert "no_such_task" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse's own usage error
        main(["data", "prepare", "vtab", "--out", str(tmp_path / "o"), "--format", "gif"])
    assert exit_info.value.code == 2
