"""The 19 VTAB-1K tasks as the benchmark's own code defines them: one table, one row per task.

Each row says which TensorFlow Datasets (TFDS) builder and version a task reads, which slice of
which TFDS split becomes ``train800`` / ``val200`` / ``test``, how an example's label is computed,
and how many classes and test images the task has. :mod:`heartlora.data.vtab_prepare` builds the
VTAB-1K folders from it; ``heartlora data verify`` checks a copy's split sizes against it.

The rows are re-derived from the benchmark's reference code, google-research/task_adaptation
(Apache-2.0), commit d7630d3c43ba052b5a35546b312d9454a9f2c96b (2021-03-22, its latest). A comment
on each value cites its source: ``cifar.py:48`` is line 48 of ``task_adaptation/data/cifar.py``;
``run_all_tasks.sh:33`` is line 33 of ``scripts/run_all_tasks.sh`` (which parameters make each
of the 19 tasks). ``train800val200`` is always ``train800`` followed by ``val200`` (every data
class writes it as the two slices joined, e.g. cifar.py:79), so it is not a row field.

Where today's TFDS cannot build what the source asks for, the row says so in ``note``:
``oxford_iiit_pet`` (the source asks 3.*.*; TFDS 4.9 builds only 4.0.0). Versions are pinned to
the exact version the source's pattern resolves to in TFDS 4.9.10, so a build is repeatable.

This module imports neither TensorFlow nor TFDS.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .tasks import VTAB_GROUPS

SOURCE_REPO = "google-research/task_adaptation"
SOURCE_COMMIT = "d7630d3c43ba052b5a35546b312d9454a9f2c96b"
#: The VTAB-1K training sizes, the same for every task (e.g. cifar.py:65-67).
TRAIN800, VAL200 = 800, 200
#: The splits written as image folders; ``train800val200`` is train800 then val200.
BUILT_SPLITS = ("train800", "val200", "test")


# ----- split slices ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Slice:
    """A run of examples of one TFDS split, as task_adaptation writes the split expression.

    ``start_percents``: the run starts at ``sum(p * n // 100 for p in start_percents)`` where ``n``
    is the TFDS split's size (the source's integer arithmetic: e.g. CIFAR's val200 starts at
    ``90 * n // 100``; EuroSAT's test at ``60 * n // 100 + 20 * n // 100``). ``tfds_percent``:
    the run starts at ``p%`` written as TFDS percent slicing (``test[50%:]``, TFDS rounds), used
    where the source writes it so. ``length``: examples from the start (None: to the split's end).
    """

    split: str
    length: int | None = None
    start_percents: tuple[int, ...] = ()
    tfds_percent: int | None = None

    def start(self, split_size: int) -> int:
        return sum(p * split_size // 100 for p in self.start_percents)

    def expression(self, split_sizes: Mapping[str, int]) -> str:
        """The TFDS split expression (``train[45000:45200]``) for a dataset with these split sizes."""
        if self.tfds_percent is not None:
            return f"{self.split}[{self.tfds_percent}%:]"
        if not self.start_percents:
            return self.split if self.length is None else f"{self.split}[:{self.length}]"
        start = self.start(split_sizes[self.split])
        return f"{self.split}[{start}:]" if self.length is None else f"{self.split}[{start}:{start + self.length}]"

    def describe(self) -> str:
        """The rule in words, independent of split sizes (``train[90%·n : +200]``)."""
        if self.tfds_percent is not None:
            return f"{self.split}[{self.tfds_percent}%:]"
        if not self.start_percents:
            return self.split if self.length is None else f"{self.split}[:{self.length}]"
        start = "+".join(f"{p}%" for p in self.start_percents)
        return f"{self.split}[{start}:]" if self.length is None else f"{self.split}[{start}:+{self.length}]"


# ----- label rules ----------------------------------------------------------------------------------
Example = Mapping[str, Any]  # one TFDS example as numpy values (nested features are dicts)


@dataclass(frozen=True)
class ClassLabel:
    """The TFDS class label as it is."""

    feature: str = "label"

    def label(self, example: Example, classes: int) -> int:
        return int(example[self.feature])

    def describe(self) -> str:
        return f"TFDS '{self.feature}'"

    def class_names(self, classes: int, tfds_names: Sequence[str] | None) -> list[str]:
        return list(tfds_names) if tfds_names else [str(c) for c in range(classes)]


@dataclass(frozen=True)
class Coarsened:
    """A TFDS class label of ``original`` values grouped into ``classes`` equal runs of neighbours:
    ``floor(v / (original / classes))`` (dsprites.py:65, 99-102), computed exactly as ``v * classes
    // original`` (the same number for every value of the used features; a test checks them all)."""

    feature: str
    original: int

    def label(self, example: Example, classes: int) -> int:
        return int(example[self.feature]) * classes // self.original

    def describe(self) -> str:
        return f"TFDS '{self.feature}' ({self.original} values) in equal bins"

    def class_names(self, classes: int, tfds_names: Sequence[str] | None) -> list[str]:
        names = []
        for c in range(classes):
            members = [v for v in range(self.original) if v * classes // self.original == c]
            names.append(f"{self.feature} {members[0]}-{members[-1]}")
        return names


@dataclass(frozen=True)
class ObjectCount:
    """The number of objects in the scene minus ``offset`` (CLEVR shows 3 to 10 objects)."""

    sequence: str
    field: str
    offset: int

    def label(self, example: Example, classes: int) -> int:
        return len(example[self.sequence][self.field]) - self.offset

    def describe(self) -> str:
        return f"number of '{self.sequence}' - {self.offset}"

    def class_names(self, classes: int, tfds_names: Sequence[str] | None) -> list[str]:
        return [f"{c + self.offset} objects" for c in range(classes)]


@dataclass(frozen=True)
class NearestDepthBin:
    """The depth (coordinate ``axis`` of ``sequence/coords``) of the nearest object, binned.

    The source computes ``max{i : thresholds[i] - d < 0}`` in float32 (thresholds are a float64
    numpy array subtracted from a float32 tensor, so they are cast to float32), i.e. the number of
    thresholds below ``d`` minus one. ``only_types_below``: count only objects whose
    ``sequence/type`` is below this value (KITTI: Car, Van, Truck); ``fill``: a depth added to the
    candidates so that a scene without such an object gets the last class. A depth at or below
    the first threshold has no bin: ``label`` returns -1, which the builder reports as an error.
    """

    sequence: str
    coords: str
    thresholds: tuple[float, ...]
    axis: int = 2
    only_types_below: int | None = None
    fill: float | None = None

    def label(self, example: Example, classes: int) -> int:
        objects = example[self.sequence]
        depths = np.asarray(objects[self.coords], dtype=np.float32).reshape(-1, 3)[:, self.axis]
        if self.only_types_below is not None:
            depths = depths[np.asarray(objects["type"]) < self.only_types_below]
        if self.fill is not None:
            depths = np.append(depths, np.float32(self.fill))
        if depths.size == 0:
            return -1
        nearest = depths.min()
        return int(np.count_nonzero(np.asarray(self.thresholds, dtype=np.float32) < nearest)) - 1

    def describe(self) -> str:
        which = f"'{self.sequence}' with type < {self.only_types_below}" if self.only_types_below is not None \
            else f"'{self.sequence}'"
        fill = f", none: {self.fill:g}" if self.fill is not None else ""
        cuts = "/".join(f"{t:g}" for t in self.thresholds)
        return f"nearest {which} depth ('{self.coords}'[{self.axis}]{fill}) binned at {cuts}"

    def class_names(self, classes: int, tfds_names: Sequence[str] | None) -> list[str]:
        cuts = self.thresholds
        return [f"{cuts[c]:g} < depth <= {cuts[c + 1]:g}" if c + 1 < len(cuts) else f"depth > {cuts[c]:g}"
                for c in range(classes)]


LabelRule = ClassLabel | Coarsened | ObjectCount | NearestDepthBin


# ----- manual downloads -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ManualDownload:
    """Files TFDS cannot download itself: what to fetch, and what ``<manual-dir>/<folder>/`` must hold."""

    folder: str
    required: tuple[str, ...]
    instructions: str


# ----- the table ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VtabTaskSource:
    """One VTAB-1K task: where its data comes from and how its splits and labels are made.

    ``task``: heartlora's canonical task name, which is also the folder name NOAH's
    ``get_vtab1k.py`` writes. ``tfds_name``: builder (``/config``); ``version``: the exact TFDS
    version built; ``source_version``: what task_adaptation asks for. ``classes``: the label
    count; ``test_size``: the official test-split size (from the TFDS split sizes and the slice).
    ``gray_to_rgb`` / ``pixel_scale``: the source's image conversion (``tf.tile(image, [1, 1, 3])``,
    times 255 for dSprites' 0/1 pixels). ``manual``: files to download by hand (None: TFDS
    downloads everything). ``note``: where this row knowingly differs from the source.
    """

    task: str
    tfds_name: str
    version: str
    source_version: str
    source_file: str
    train800: Slice
    val200: Slice
    test: Slice
    label: LabelRule
    classes: int
    test_size: int
    gray_to_rgb: bool = False
    pixel_scale: int = 1
    image: str = "image"
    manual: ManualDownload | None = None
    note: str = ""

    @property
    def group(self) -> str:
        return next(group for group, members in VTAB_GROUPS.items() if self.task in members)

    def slices(self) -> dict[str, Slice]:
        return {"train800": self.train800, "val200": self.val200, "test": self.test}

    def expected_sizes(self) -> dict[str, int]:
        """The official VTAB-1K size of each list this task has."""
        return {"train800": TRAIN800, "val200": VAL200, "train800val200": TRAIN800 + VAL200, "test": self.test_size}


_RESISC45_MANUAL = ManualDownload(
    folder="resisc45",
    required=("NWPU-RESISC45",),
    instructions="NWPU-RESISC45.rar (the RESISC45 dataset page; TFDS's catalog links its download), "
                 "extracted so that the folder NWPU-RESISC45/ (45 class folders of .jpg) sits in it",
)
_RETINOPATHY_MANUAL = ManualDownload(
    folder="diabetic_retinopathy_detection",
    required=("train", "test", "sample", "trainLabels.csv"),
    instructions="the Kaggle competition data 'diabetic-retinopathy-detection' (kaggle competitions download -c "
                 "diabetic-retinopathy-detection), unpacked into train/, test/ and sample/ (the .jpeg images) "
                 "and trainLabels.csv; TFDS then downloads the test labels itself (btgraham-300 needs OpenCV)",
)

# Slices shared by tasks whose TFDS dataset has a validation split: train[:800], validation[:200].
_TRAIN_HEAD = Slice("train", TRAIN800)
_VALIDATION_HEAD = Slice("validation", VAL200)

VTAB_SOURCES: tuple[VtabTaskSource, ...] = (
    # ---- natural -------------------------------------------------------------------------------------
    VtabTaskSource(
        task="cifar",  # run_all_tasks.sh:23 cifar(num_classes=100)
        tfds_name="cifar100", version="3.0.2", source_version="3.*.*",  # cifar.py:48
        source_file="cifar.py",
        train800=_TRAIN_HEAD,  # cifar.py:76
        val200=Slice("train", VAL200, start_percents=(90,)),  # cifar.py:77-78, train = 90% (cifar.py:28, 61)
        test=Slice("test"),  # cifar.py:75
        label=ClassLabel("label"),  # cifar.py:90
        classes=100,  # cifar.py:91 (cifar100's label feature)
        test_size=10_000,  # TFDS cifar100 test: 10,000
    ),
    VtabTaskSource(
        task="caltech101",  # run_all_tasks.sh:22
        tfds_name="caltech101", version="3.0.2", source_version="3.*.*",  # caltech.py:51
        source_file="caltech.py",
        train800=_TRAIN_HEAD,  # caltech.py:73
        val200=Slice("train", VAL200, start_percents=(90,)),  # caltech.py:74, train = 90% (caltech.py:28, 56)
        test=Slice("test"),  # caltech.py:72
        label=ClassLabel("label"),  # caltech.py:85
        classes=102,  # caltech.py:86
        test_size=6_084,  # TFDS caltech101 test: 6,084
    ),
    VtabTaskSource(
        task="dtd",  # run_all_tasks.sh:24
        tfds_name="dtd", version="3.0.1", source_version="3.*.*",  # dtd.py:38
        source_file="dtd.py",
        train800=_TRAIN_HEAD,  # dtd.py:47
        val200=_VALIDATION_HEAD,  # dtd.py:48
        test=Slice("test"),  # dtd.py:46
        label=ClassLabel("label"),  # dtd.py:73
        classes=47,  # dtd.py:74
        test_size=1_880,  # TFDS dtd test: 1,880
    ),
    VtabTaskSource(
        task="oxford_flowers102",  # run_all_tasks.sh:25 (no train_split_percent: oxford_flowers102.py:67-76)
        tfds_name="oxford_flowers102", version="2.1.1", source_version="2.*.*",  # oxford_flowers102.py:36
        source_file="oxford_flowers102.py",
        train800=_TRAIN_HEAD,  # oxford_flowers102.py:74
        val200=_VALIDATION_HEAD,  # oxford_flowers102.py:75
        test=Slice("test"),  # oxford_flowers102.py:73
        label=ClassLabel("label"),  # oxford_flowers102.py:94-97
        classes=102,  # oxford_flowers102.py:98-99
        test_size=6_149,  # TFDS oxford_flowers102 test: 6,149
    ),
    VtabTaskSource(
        task="oxford_iiit_pet",  # run_all_tasks.sh:26
        tfds_name="oxford_iiit_pet", version="4.0.0", source_version="3.*.*",  # oxford_iiit_pet.py:45
        source_file="oxford_iiit_pet.py",
        train800=_TRAIN_HEAD,  # oxford_iiit_pet.py:68
        val200=Slice("train", VAL200, start_percents=(80,)),  # oxford_iiit_pet.py:69-70, 80% (:28, :53)
        test=Slice("test"),  # oxford_iiit_pet.py:67
        label=ClassLabel("label"),  # oxford_iiit_pet.py:82
        classes=37,  # oxford_iiit_pet.py:83
        test_size=3_669,  # TFDS oxford_iiit_pet test: 3,669
        note="the source asks for 3.*.*, which TFDS 4.9 can no longer build (it builds 4.0.0 only: head boxes "
             "added, corrupt images fixed, new download URL); the slices are the source's",
    ),
    VtabTaskSource(
        task="svhn",  # run_all_tasks.sh:29
        tfds_name="svhn_cropped", version="3.1.0", source_version="3.*.*",  # svhn.py:48
        source_file="svhn.py",
        train800=_TRAIN_HEAD,  # svhn.py:80-81
        val200=Slice("train", VAL200, start_percents=(90,)),  # svhn.py:82-84, 90% (svhn.py:28, 58)
        test=Slice("test"),  # svhn.py:78-79
        label=ClassLabel("label"),  # svhn.py:97-100
        classes=10,  # svhn.py:101-102
        test_size=26_032,  # TFDS svhn_cropped test: 26,032
    ),
    VtabTaskSource(
        task="sun397",  # run_all_tasks.sh:28 (config "tfds": sun397.py:34)
        tfds_name="sun397/tfds", version="4.0.0", source_version="4.*.*",  # sun397.py:37
        source_file="sun397.py",
        train800=_TRAIN_HEAD,  # sun397.py:45
        val200=_VALIDATION_HEAD,  # sun397.py:46
        test=Slice("test"),  # sun397.py:43
        label=ClassLabel("label"),  # sun397.py:71
        classes=397,  # sun397.py:72
        test_size=21_750,  # TFDS sun397/tfds test: 21,750
    ),
    # ---- specialized ---------------------------------------------------------------------------------
    VtabTaskSource(
        task="patch_camelyon",  # run_all_tasks.sh:27
        tfds_name="patch_camelyon", version="2.0.0", source_version="2.*.*",  # patch_camelyon.py:32
        source_file="patch_camelyon.py",
        train800=_TRAIN_HEAD,  # patch_camelyon.py:41
        val200=_VALIDATION_HEAD,  # patch_camelyon.py:42
        test=Slice("test"),  # patch_camelyon.py:37
        label=ClassLabel("label"),  # patch_camelyon.py:63
        classes=2,  # patch_camelyon.py:64
        test_size=32_768,  # TFDS patch_camelyon test: 32,768
    ),
    VtabTaskSource(
        task="eurosat",  # run_all_tasks.sh:31 (subset "rgb": eurosat.py:41)
        tfds_name="eurosat/rgb", version="2.0.0", source_version="2.*.*",  # eurosat.py:42
        source_file="eurosat.py",
        train800=_TRAIN_HEAD,  # eurosat.py:61-62
        val200=Slice("train", VAL200, start_percents=(60,)),  # eurosat.py:63-64, 60% (eurosat.py:25, 48)
        test=Slice("train", start_percents=(60, 20)),  # eurosat.py:59-60, 60% + 20% (eurosat.py:25-26, 48-49)
        label=ClassLabel("label"),  # eurosat.py:90-93
        classes=10,  # eurosat.py:96
        test_size=5_400,  # TFDS eurosat/rgb train: 27,000 - 16,200 - 5,400
    ),
    VtabTaskSource(
        task="resisc45",  # run_all_tasks.sh:30
        tfds_name="resisc45", version="3.0.0", source_version="3.*.*",  # resisc45.py:43
        source_file="resisc45.py",
        train800=_TRAIN_HEAD,  # resisc45.py:61-62
        val200=Slice("train", VAL200, start_percents=(60,)),  # resisc45.py:63-64, 60% (resisc45.py:25, 48)
        test=Slice("train", start_percents=(60, 20)),  # resisc45.py:59-60, 60% + 20% (resisc45.py:25-26, 48-49)
        label=ClassLabel("label"),  # resisc45.py:87-90
        classes=45,  # resisc45.py:91
        test_size=6_300,  # TFDS resisc45 train: 31,500 - 18,900 - 6,300
        manual=_RESISC45_MANUAL,  # README.md "Dataset preparation": cannot be downloaded automatically
    ),
    VtabTaskSource(
        task="diabetic_retinopathy",  # run_all_tasks.sh:40 diabetic_retinopathy(config="btgraham-300")
        tfds_name="diabetic_retinopathy_detection/btgraham-300", version="3.0.0",
        source_version="3.*.*",  # diabetic_retinopathy.py:52-54
        source_file="diabetic_retinopathy.py",
        train800=_TRAIN_HEAD,  # diabetic_retinopathy.py:66
        val200=_VALIDATION_HEAD,  # diabetic_retinopathy.py:67
        test=Slice("test"),  # diabetic_retinopathy.py:65
        label=ClassLabel("label"),  # diabetic_retinopathy.py:92 (heavy augmentation off: :42, 109)
        classes=5,  # diabetic_retinopathy.py:93
        test_size=42_670,  # TFDS btgraham-300 test: 42,670
        manual=_RETINOPATHY_MANUAL,  # README.md "Dataset preparation": cannot be downloaded automatically
    ),
    # ---- structured ----------------------------------------------------------------------------------
    VtabTaskSource(
        task="clevr_count",  # run_all_tasks.sh:39 clevr(task="count_all")
        tfds_name="clevr", version="3.1.0", source_version="3.*.*",  # clevr.py:86
        source_file="clevr.py",
        train800=_TRAIN_HEAD,  # clevr.py:108
        val200=Slice("train", VAL200, start_percents=(90,)),  # clevr.py:109-110, 90% (clevr.py:29, 93)
        test=Slice("validation"),  # clevr.py:107 (CLEVR's test split has no scene annotations)
        label=ObjectCount("objects", "size", offset=3),  # clevr.py:32-34
        classes=8,  # clevr.py:59
        test_size=15_000,  # TFDS clevr validation: 15,000
    ),
    VtabTaskSource(
        task="clevr_dist",  # run_all_tasks.sh:38 clevr(task="closest_object_distance")
        tfds_name="clevr", version="3.1.0", source_version="3.*.*",  # clevr.py:86
        source_file="clevr.py",
        train800=_TRAIN_HEAD,  # clevr.py:108
        val200=Slice("train", VAL200, start_percents=(90,)),  # clevr.py:109-110, 90% (clevr.py:29, 93)
        test=Slice("validation"),  # clevr.py:107
        label=NearestDepthBin("objects", "pixel_coords",
                              thresholds=(0.0, 8.0, 8.5, 9.0, 9.5, 10.0, 100.0)),  # clevr.py:45-53, :50
        classes=6,  # clevr.py:67
        test_size=15_000,  # TFDS clevr validation: 15,000
    ),
    VtabTaskSource(
        task="dmlab",  # run_all_tasks.sh:32
        tfds_name="dmlab", version="2.0.1", source_version="2.0.1",  # dmlab.py:42
        source_file="dmlab.py",
        train800=_TRAIN_HEAD,  # dmlab.py:49
        val200=_VALIDATION_HEAD,  # dmlab.py:50
        test=Slice("test"),  # dmlab.py:48
        label=ClassLabel("label"),  # dmlab.py:76-79
        classes=6,  # dmlab.py:80
        test_size=22_735,  # TFDS dmlab test: 22,735
    ),
    VtabTaskSource(
        task="kitti",  # run_all_tasks.sh:33 kitti(task="closest_vehicle_distance")
        tfds_name="kitti", version="3.1.0", source_version="3.1.0",  # kitti.py:172
        source_file="kitti.py",
        train800=_TRAIN_HEAD,  # kitti.py:180
        val200=_VALIDATION_HEAD,  # kitti.py:181
        test=Slice("test"),  # kitti.py:179
        label=NearestDepthBin("objects", "location", thresholds=(-100.0, 8.0, 20.0, 999.0),
                              only_types_below=3, fill=1000.0),  # kitti.py:90-103 (types < 3: Car, Van, Truck)
        classes=4,  # kitti.py:149
        test_size=711,  # TFDS kitti test: 711
    ),
    VtabTaskSource(
        task="dsprites_loc",  # run_all_tasks.sh:36 dsprites(predicted_attribute="label_x_position", num_classes=16)
        tfds_name="dsprites", version="2.0.0", source_version="2.*.*",  # dsprites.py:47
        source_file="dsprites.py",
        train800=_TRAIN_HEAD,  # dsprites.py:88
        val200=Slice("train", VAL200, start_percents=(80,)),  # dsprites.py:89-90, 80% (dsprites.py:30, 69)
        test=Slice("train", start_percents=(80, 10)),  # dsprites.py:87, 80% + 10% (dsprites.py:30-31, 69-74)
        label=Coarsened("label_x_position", original=32),  # dsprites.py:58, 65, 99-102
        classes=16,  # run_all_tasks.sh:36
        test_size=73_728,  # TFDS dsprites train: 737,280 - 589,824 - 73,728
        gray_to_rgb=True, pixel_scale=255,  # dsprites.py:98
    ),
    VtabTaskSource(
        task="dsprites_ori",  # run_all_tasks.sh:37 dsprites(predicted_attribute="label_orientation", num_classes=16)
        tfds_name="dsprites", version="2.0.0", source_version="2.*.*",  # dsprites.py:47
        source_file="dsprites.py",
        train800=_TRAIN_HEAD,  # dsprites.py:88
        val200=Slice("train", VAL200, start_percents=(80,)),  # dsprites.py:89-90, 80% (dsprites.py:30, 69)
        test=Slice("train", start_percents=(80, 10)),  # dsprites.py:87, 80% + 10% (dsprites.py:30-31, 69-74)
        label=Coarsened("label_orientation", original=40),  # dsprites.py:58, 65, 99-102
        classes=16,  # run_all_tasks.sh:37
        test_size=73_728,  # TFDS dsprites train: 737,280 - 589,824 - 73,728
        gray_to_rgb=True, pixel_scale=255,  # dsprites.py:98
    ),
    VtabTaskSource(
        task="smallnorb_azi",  # run_all_tasks.sh:34 smallnorb(predicted_attribute="label_azimuth")
        tfds_name="smallnorb", version="2.0.0", source_version="2.*.*",  # smallnorb.py:47
        source_file="smallnorb.py",
        train800=_TRAIN_HEAD,  # smallnorb.py:60
        val200=Slice("test", VAL200),  # smallnorb.py:61 (val200 comes from TFDS's test split)
        test=Slice("test", tfds_percent=50),  # smallnorb.py:59, VAL_SPLIT_PERCENT = 50 (smallnorb.py:29)
        label=ClassLabel("label_azimuth"),  # smallnorb.py:82
        classes=18,  # smallnorb.py:93
        test_size=12_150,  # TFDS smallnorb test: 24,300 - 50%
        gray_to_rgb=True,  # smallnorb.py:81
    ),
    VtabTaskSource(
        task="smallnorb_ele",  # run_all_tasks.sh:35 smallnorb(predicted_attribute="label_elevation")
        tfds_name="smallnorb", version="2.0.0", source_version="2.*.*",  # smallnorb.py:47
        source_file="smallnorb.py",
        train800=_TRAIN_HEAD,  # smallnorb.py:60
        val200=Slice("test", VAL200),  # smallnorb.py:61
        test=Slice("test", tfds_percent=50),  # smallnorb.py:59, 29
        label=ClassLabel("label_elevation"),  # smallnorb.py:82
        classes=9,  # smallnorb.py:93
        test_size=12_150,  # TFDS smallnorb test: 24,300 - 50%
        gray_to_rgb=True,  # smallnorb.py:81
    ),
)

#: task name -> its row.
VTAB_SOURCE: dict[str, VtabTaskSource] = {row.task: row for row in VTAB_SOURCES}


def expected_split_sizes(task: str) -> dict[str, int] | None:
    """The official VTAB-1K list sizes of a canonical task name, or None for a task of one's own."""
    row = VTAB_SOURCE.get(task)
    return row.expected_sizes() if row is not None else None
