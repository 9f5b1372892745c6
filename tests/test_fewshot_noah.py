"""Few-shot and VTAB-1K data exactly as NOAH distributes it: its folder names and list-line forms.

NOAH's repository ships the few-shot lists as ``data/few-shot/<folder>/annotations/`` with the
folders spelt ``fgvc-aircraft``, ``food101``, ``oxford-flowers102``, ``oxford-pets`` and
``standford-cars``; its scripts name the datasets ``<name>-FS`` (``food-101-FS``, …) and point
to CoOp's image folders (``stanford_cars/cars_train/…``). The names below are written out
literally, so the test does not lean on the alias tables it checks.
"""
from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest

from heartlora.data import DataError, DataWarning, canonical_task, load_task, verify
from heartlora.data.fewshot import IMAGE_ROOTS, NOAH_IMAGE_ROOTS
from heartlora.data.synthetic import make_fewshot, make_vtab
from heartlora.data.tasks import lookup_task

# canonical -> (NOAH annotation folder, NOAH's --data-set spelling, classes, 1-shot line form, test line form)
NOAH_FEWSHOT = {
    "fgvc_aircraft": ("fgvc-aircraft", "fgvc_aircraft-FS", 100, r"\d{7}\.jpg \d+", r"\d{7}\.jpg \d+"),
    "food101": ("food101", "food-101-FS", 101, r"\w+/\d+\.jpg \d+", r"\w+/\d+\.jpg \d+"),
    "oxford_flowers102": ("oxford-flowers102", "oxford_flowers-FS", 102, r"image_\d{5}\.jpg \d+",
                          r"image_\d{5}\.jpg \d+"),
    "oxford_pets": ("oxford-pets", "oxford_pets-FS", 37, r"\w+_\d+\.jpg \d+", r"\w+_\d+\.jpg \d+"),
    "stanford_cars": ("standford-cars", "stanford_cars-FS", 196, r"cars_train/\d{5}\.jpg \d+",
                      r"cars_test/\d{5}\.jpg \d+"),
}
# CoOp's DATASETS.md image folders (NOAH's README sends users there for the images)
COOP_IMAGES = {"oxford_flowers102": ("oxford_flowers", "jpg"), "oxford_pets": ("oxford_pets", "images"),
               "stanford_cars": ("stanford_cars", "")}


def quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return load_task(*args, **kwargs)


@pytest.fixture(scope="module")
def noah_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("noah")
    for dataset in NOAH_FEWSHOT:
        make_fewshot(root, dataset, shots=(1, 2), seeds=(0, 1), n_test=4, image_size=8, layout="noah")
    return root


def test_noah_tree_has_noahs_folder_names_and_line_forms(noah_root):
    assert sorted(p.name for p in noah_root.iterdir()) == sorted(v[0] for v in NOAH_FEWSHOT.values())
    for folder, _, classes, train_form, test_form in NOAH_FEWSHOT.values():
        annotations = noah_root / folder / "annotations"
        one_shot = (annotations / "train_meta.list.num_shot_1.seed_0").read_text().splitlines()
        test = (annotations / "test_meta.list").read_text().splitlines()
        assert all(re.fullmatch(train_form, line) for line in one_shot), (folder, one_shot[:2])
        assert all(re.fullmatch(test_form, line) for line in test), (folder, test[:2])
        # NOAH's 1-shot Pets lists carry every line twice; the other lists one line per image
        assert len(one_shot) == classes * (2 if folder == "oxford-pets" else 1)


@pytest.mark.parametrize("dataset", list(NOAH_FEWSHOT))
def test_each_dataset_loads_under_canonical_and_noah_spellings(noah_root, dataset):
    folder, data_set, classes, _, _ = NOAH_FEWSHOT[dataset]
    hashes = set()
    for task in (dataset, folder, data_set):
        data = quiet_load("fewshot", noah_root, task, shots=2, seed=1, image_size=8, check_images=True)
        assert (data.name, data.num_classes, len(data.train), len(data.eval)) == (dataset, classes, 2 * classes, 4)
        assert sorted(set(data.train.targets)) == list(range(classes))
        hashes.add(data.manifest_hash)
    direct = quiet_load("fewshot", noah_root / folder, shots=2, seed=1, image_size=8)  # root = the folder itself
    assert direct.name == dataset and {direct.manifest_hash} == hashes
    images = NOAH_IMAGE_ROOTS[dataset]  # where NOAH's loader joins the list paths
    assert images in IMAGE_ROOTS[dataset]
    report = verify("fewshot", str(noah_root), folder, shots=1, seed=0)
    assert report["ok"] and report["num_classes"] == classes
    assert report["splits"]["test_meta.list"]["image_root"] == str(noah_root / folder / images if images
                                                                   else noah_root / folder)


def test_one_shot_pets_duplicates_reported_and_removed(noah_root):
    with pytest.warns(DataWarning, match=r"num_shot_1\.seed_0: 37 duplicate lines ignored \(line 2 repeats line 1"):
        pets = load_task("fewshot", noah_root, "oxford-pets", shots=1, seed=0, image_size=8)
    assert len(pets.train) == 37
    report = verify("fewshot", str(noah_root), "oxford_pets", shots=1, seed=0)
    assert report["ok"] and len(report["splits"]["train_meta.list.num_shot_1.seed_0"]["duplicates"]) == 37


def test_noah_lists_beside_coop_image_folders(tmp_path):
    """NOAH's README: lists from its tree, images from CoOp's folders, both under one root."""
    for dataset, (coop, sub) in COOP_IMAGES.items():
        folder = NOAH_FEWSHOT[dataset][0]
        make_fewshot(tmp_path, dataset, shots=(1,), n_test=3, image_size=8, layout="noah")
        before = quiet_load("fewshot", tmp_path, dataset, shots=1, seed=0, image_size=8).manifest_hash
        images = tmp_path / coop / sub if sub else tmp_path / coop
        images.mkdir(parents=True)
        source = tmp_path / folder / NOAH_IMAGE_ROOTS[dataset]
        for path in [p for p in source.iterdir() if p.name != "annotations"]:
            shutil.move(str(path), str(images / path.name))
        if dataset == "oxford_pets":  # CoOp's Pets folder has the archive's own annotations/, not NOAH's lists
            (tmp_path / coop / "annotations").mkdir()
            (tmp_path / coop / "annotations" / "trainval.txt").write_text("Abyssinian_100 1 1 1\n")
        data = quiet_load("fewshot", tmp_path, dataset, shots=1, seed=0, image_size=8, check_images=True)
        assert data.manifest_hash == before and data.num_classes == NOAH_FEWSHOT[dataset][2]
        report = verify("fewshot", str(tmp_path), dataset, shots=1, seed=0)
        assert report["ok"] and report["directory"] == str(tmp_path / folder)
        assert report["splits"]["test_meta.list"]["image_root"] == str(images)


@pytest.mark.parametrize("name, canonical", [
    ("standford-cars", "stanford_cars"), ("stanford_cars-FS", "stanford_cars"), ("StanfordCars", "stanford_cars"),
    ("oxford-flowers102", "oxford_flowers102"), ("oxford_flowers-FS", "oxford_flowers102"),
    ("oxford-pets", "oxford_pets"), ("fgvc-aircraft", "fgvc_aircraft"), ("food-101-FS", "food101"),
    ("food101", "food101"), ("FGVCAircraft", "fgvc_aircraft"),
])
def test_lookup_and_canonical_accept_noah_spellings(name, canonical):
    assert lookup_task(name, "fewshot") == canonical_task(name, "fewshot") == canonical


def test_unmatched_names_list_every_folder_and_the_alias_needed(tmp_path):
    make_fewshot(tmp_path, "fgvc_aircraft", shots=(1,), n_test=2, image_size=8, layout="noah")
    make_fewshot(tmp_path, "stanford_cars", shots=(1,), n_test=2, image_size=8, layout="noah")
    (tmp_path / "standford-cars").rename(tmp_path / "Stanford-Car")  # a near miss: no alias
    (tmp_path / "notes").mkdir()
    with pytest.raises(DataError) as caught:
        load_task("fewshot", tmp_path, "stanford_cars", shots=1, seed=0)
    message = str(caught.value)
    assert "no folder for few-shot dataset 'stanford_cars'" in message and "standford_cars" in message
    assert (f"folders found in {tmp_path}: Stanford-Car (no alias), fgvc-aircraft (= fgvc_aircraft), "
            "notes (no alias)") in message
    assert "folder 'Stanford-Car' (read as 'stanford_car') is no alias of 'stanford_cars': it would need the " \
           "name 'stanford_cars'" in message and "\n" not in message
    # the way out the message names: the folder itself as the root
    assert quiet_load("fewshot", tmp_path / "Stanford-Car", "standford-cars", shots=1, seed=0,
                      image_size=8).num_classes == 196
    with pytest.raises(DataError, match=r"unknown few-shot dataset 'standford' \(did you mean 'stanford_cars', "
                                        r"alias 'standford_cars'\?\).*folders found in .*Stanford-Car \(no alias\), "
                                        r"fgvc-aircraft \(= fgvc_aircraft\), notes \(no alias\)"):
        load_task("fewshot", tmp_path, "standford", shots=1, seed=0)


# NOAH data/vtab-source/get_vtab1k.py writes <name>[_<postfix>]; lib/datasets.py names the tasks for
# --data-set (cifar100, oxford_pet) and gives nb_classes.
NOAH_VTAB = {
    "caltech101": ("caltech101", 102), "cifar": ("cifar100", 100), "dtd": ("dtd", 47),
    "oxford_flowers102": ("oxford_flowers102", 102), "oxford_iiit_pet": ("oxford_pet", 37),
    "patch_camelyon": ("patch_camelyon", 2), "sun397": ("sun397", 397), "svhn": ("svhn", 10),
    "resisc45": ("resisc45", 45), "eurosat": ("eurosat", 10), "dmlab": ("dmlab", 6), "kitti": ("kitti", 4),
    "smallnorb_azi": ("smallnorb_azi", 18), "smallnorb_ele": ("smallnorb_ele", 9),
    "dsprites_loc": ("dsprites_loc", 16), "dsprites_ori": ("dsprites_ori", 16), "clevr_dist": ("clevr_dist", 6),
    "clevr_count": ("clevr_count", 8), "diabetic_retinopathy": ("diabetic_retinopathy", 5),
}


def test_vtab_folder_names_of_noah_get_vtab1k(tmp_path):
    root = make_vtab(tmp_path, tasks=list(NOAH_VTAB), n_train=1, n_val=1, n_test=1, image_size=8, num_classes=2)
    assert sorted(p.name for p in root.iterdir()) == sorted(NOAH_VTAB)
    for folder, (data_set, classes) in NOAH_VTAB.items():
        for task in (folder, data_set):
            data = load_task("vtab", root, task, image_size=8)
            assert (data.name, data.num_classes, len(data.train)) == (lookup_task(folder), classes, 2)
