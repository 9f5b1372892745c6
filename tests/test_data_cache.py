"""The decoded-image cache: bit-identical items on every layout and split, keys, files, runs."""
import copy
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T

from heartlora.cli import main
from heartlora.config import ConfigError, RunConfig, apply_mapping, load_yaml
from heartlora.data import DataError, load_task
from heartlora.data.cache import CachedImageDataset, apply_cache, batched, collate, plan_cache
from heartlora.data.synthetic import make_fewshot, make_folder, make_vtab
from heartlora.engine.loop import train
from heartlora.seeding import seed_all

from conftest import tiny_config

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised", "ignore:option 'epochs'")

SIZE = 24  # source images are 40 px: the resize really resamples


def _odd_images(folder: Path) -> None:
    """Images of modes that need decode.py's rules (16-bit grey, alpha, palette), among the JPEG/PNGs."""
    rng = np.random.default_rng(5)
    Image.fromarray(rng.integers(0, 65535, (30, 44), dtype=np.uint16)).save(folder / "grey16.png")
    Image.fromarray(rng.integers(0, 255, (44, 30, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (33, 33, 3), dtype=np.uint8)).convert("P").save(folder / "palette.png")


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """kind -> (load_task arguments) for one task per layout; splits with val lists everywhere."""
    base = tmp_path_factory.mktemp("layouts")
    make_vtab(base / "vtab", tasks=("cifar",), n_train=10, n_val=4, n_test=6, image_size=40, num_classes=4)
    make_fewshot(base / "fewshot", "oxford_pets", shots=(1,), seeds=(0,), n_test=5, n_val=3, image_size=40)
    make_folder(base / "folder", classes=3, per_split=(6, 3, 5), image_size=40)
    _odd_images(base / "folder" / "train" / "class_1")
    return {"vtab": (("vtab", str(base / "vtab"), "cifar"), {}),
            "fewshot": (("fewshot", str(base / "fewshot"), "oxford_pets"), {"shots": 1, "seed": 0}),
            "folder": (("folder", str(base / "folder")), {})}


def _batches(dataset, seed: int, shuffle: bool, collate_fn=None) -> list:
    """All batches of a seeded loader, as the engine draws them (global RNG for augmentation);
    with ``collate_fn``, through ``batched`` as the engine's loaders do."""
    seed_all(seed)
    loader = DataLoader(dataset if collate_fn is None else batched(dataset), batch_size=4, shuffle=shuffle,
                        generator=torch.Generator().manual_seed(seed), collate_fn=collate_fn)
    return [(images.clone(), labels.clone()) for images, labels in loader]


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


@pytest.mark.parametrize("augment", [True, False])
@pytest.mark.parametrize("split", ["final", "tune"])
@pytest.mark.parametrize("kind", ["vtab", "fewshot", "folder"])
def test_cached_items_equal_uncached_on_every_layout_and_split(layouts, tmp_path, kind, split, augment):
    args, extra = layouts[kind]
    common = dict(split=split, image_size=SIZE, augment=augment, normalize="imagenet" if augment else "none", **extra)
    plain = load_task(*args, **common)
    memory = load_task(*args, **common, cache="auto")
    mapped = load_task(*args, **common, cache="auto", cache_memory_mb=0, cache_dir=tmp_path / "cache")
    assert {s["storage"] for s in memory.cache["splits"].values()} == {"memory"}
    assert {s["storage"] for s in mapped.cache["splits"].values()} == {"mmap"}
    assert plain.cache["mode"] == "off" and {s["storage"] for s in plain.cache["splits"].values()} == {"off"}
    assert isinstance(mapped.train, CachedImageDataset) and mapped.train.paths == plain.train.paths
    draws = []
    for seed in (1, 2):  # the augmentation is live on the cached items (so equal batches mean something)
        torch.manual_seed(seed)
        draws.append(memory.train[0][0])
    assert torch.equal(*draws) is not augment
    for role in ("train", "eval"):
        expected = _batches(getattr(plain, role), seed=7, shuffle=role == "train")
        for task in (memory, mapped):
            for collate_fn in (None, collate):  # the engine's loaders: batches converted in one piece
                got = _batches(getattr(task, role), seed=7, shuffle=role == "train", collate_fn=collate_fn)
                assert _same(got, expected), (kind, split, role, collate_fn)
        picked = [len(plain.eval) - 1, 0, 1]  # a Subset (held-out data, DDP shards) batches alike
        expected = _batches(Subset(plain.eval, picked), 3, False)
        assert _same(_batches(Subset(memory.eval, picked), 3, False, collate), expected)
        for index in (0, -1):  # single items too (seeded alike: augmentation draws random numbers)
            torch.manual_seed(index)
            item = getattr(memory, role)[index][0]
            torch.manual_seed(index)
            assert torch.equal(item, getattr(plain, role)[index][0])


def _vtab_task(tmp_path, **kwargs):
    root = make_vtab(tmp_path / "data", tasks=("cifar",), n_train=8, n_val=2, n_test=6, image_size=40, num_classes=4)
    load = lambda **more: load_task("vtab", str(root), "cifar", **{"image_size": SIZE, "cache": "auto",  # noqa: E731
                                                                   "cache_memory_mb": 0, "cache_dir": tmp_path / "c",
                                                                   **kwargs, **more})
    return root / "cifar", load


def test_cache_files_are_rebuilt_when_an_image_the_size_or_the_resize_changes(tmp_path):
    task_dir, load = _vtab_task(tmp_path)
    first = load()
    eval_info = first.cache["splits"]["eval"]
    assert not eval_info["reused"] and Path(eval_info["file"]).is_file()
    again = load()
    assert again.cache["splits"]["eval"]["reused"] and again.cache["splits"]["eval"]["key"] == eval_info["key"]
    assert torch.equal(again.eval[0][0], first.eval[0][0])

    # a normalisation change is no change of the cached prefix: same file, items as uncached
    normalised = load(normalize="inception")
    assert normalised.cache["splits"]["eval"]["reused"]
    plain = load(normalize="inception", cache="off")
    assert all(torch.equal(normalised.eval[i][0], plain.eval[i][0]) for i in range(len(plain.eval)))

    # an image rewritten in place (other pixels, other modification time): new key, rebuilt, new pixels
    image = task_dir / "images" / "test" / "000000.jpg"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image, quality=95)
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))
    changed = load()
    info = changed.cache["splits"]["eval"]
    assert info["key"] != eval_info["key"] and not info["reused"] and info["file"] != eval_info["file"]
    assert changed.cache["splits"]["train"]["reused"]  # the training images did not change
    assert torch.equal(changed.eval[0][0], load(cache="off").eval[0][0])
    assert not torch.equal(changed.eval[0][0], first.eval[0][0])

    # another image size: another key and shape
    smaller = load(image_size=16)
    assert smaller.cache["splits"]["eval"]["key"] != info["key"] and smaller.eval[0][0].shape == (3, 16, 16)
    assert torch.equal(smaller.eval[1][0], load(image_size=16, cache="off").eval[1][0])

    # another resize (the deterministic part of the transform): another key, items as uncached
    dataset = copy.copy(load(cache="off").eval)
    dataset.transform = T.Compose([T.Resize((SIZE, SIZE), interpolation=T.InterpolationMode.BILINEAR), T.ToTensor()])
    plans = plan_cache([("eval", "test", dataset)], "auto", 0, tmp_path / "c")
    result = apply_cache(plans, task="cifar", manifest=changed.manifest, manifest_hash=changed.manifest_hash,
                         task_directory=task_dir, mode="auto", memory_mb=0, directory=tmp_path / "c")
    bilinear = result.info["splits"]["eval"]
    assert bilinear["key"] != info["key"] and not bilinear["reused"]
    assert all(torch.equal(result.datasets["eval"][i][0], dataset[i][0]) for i in range(len(dataset)))


def test_a_broken_or_foreign_cache_file_is_rebuilt_and_concurrent_builds_agree(tmp_path):
    _, load = _vtab_task(tmp_path)
    reference = load(cache="off")
    path = Path(load().cache["splits"]["eval"]["file"])
    path.write_bytes(path.read_bytes()[:5000])  # truncated (e.g. a copy cut short)
    rebuilt = load()
    assert not rebuilt.cache["splits"]["eval"]["reused"] and rebuilt.cache["splits"]["eval"]["file"] == str(path)
    path.unlink()
    results, errors = [], []

    def build():
        try:
            results.append(load())
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 3
    assert sorted(p.name for p in path.parent.iterdir()) == sorted({Path(s["file"]).name for s in
                                                                    results[0].cache["splits"].values()})
    for task in (*results, load()):
        assert all(torch.equal(task.eval[i][0], reference.eval[i][0]) for i in range(len(reference.eval)))


def test_over_budget_split_goes_to_a_file_and_without_a_folder_stays_uncached(tmp_path):
    # at 128 px the 8 training images take 0.375 MiB (within 1 MiB), the 24 test images 1.125 MiB (over)
    root = make_vtab(tmp_path / "data", tasks=("cifar",), n_train=6, n_val=2, n_test=24, image_size=40, num_classes=4)
    args = ("vtab", str(root), "cifar")
    split = load_task(*args, image_size=128, cache="auto", cache_memory_mb=1, cache_dir=tmp_path / "c")
    assert split.cache["splits"]["train"]["storage"] == "memory" and split.cache["splits"]["eval"]["storage"] == "mmap"
    plain = load_task(*args, image_size=128)
    assert _same(_batches(split.eval, 1, False), _batches(plain.eval, 1, False))
    nowhere = load_task(*args, image_size=128, cache="auto", cache_memory_mb=1)
    uncached = nowhere.cache["splits"]["eval"]
    assert uncached["storage"] == "off" and "--cache-dir" in uncached["reason"]
    assert type(nowhere.eval) is type(plain.eval)


def test_bad_images_fail_the_cache_build_with_the_list_line_and_leave_no_file(tmp_path):
    task_dir, load = _vtab_task(tmp_path)
    (task_dir / "images" / "test" / "000003.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"000003\.jpg \(listed in .*test\.txt:4\): cannot read image"):
        load()
    assert not (tmp_path / "c").exists()
    with pytest.raises(DataError, match="option '--cache'"):
        load(cache="on")
    with pytest.raises(DataError, match="option '--cache-memory-mb'"):
        load(cache_memory_mb=-1)


def test_a_transform_set_after_loading_decodes_from_the_files(tmp_path):
    _, load = _vtab_task(tmp_path)
    task, plain = load(), load(cache="off")
    other = T.Compose([T.Resize((8, 8)), T.ToTensor()])
    task.train.transform = plain.train.transform = other
    assert task.train[0][0].shape == (3, 8, 8) and torch.equal(task.train[0][0], plain.train[0][0])


def test_cache_options_in_the_config_and_on_the_command_line(tmp_path, capsys):
    config = RunConfig.from_dict({"data": "x", "cache": "off", "cache_memory_mb": 64, "cache_dir": "/tmp/c"}).validate()
    assert (config.data.cache, config.data.cache_memory_mb, config.data.cache_dir) == ("off", 64, "/tmp/c")
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("data: x\ncache: off\ndata_fingerprint: off\n")  # unquoted off: a YAML boolean
    values, lines = load_yaml(yaml_file)
    config = apply_mapping(RunConfig(), values, str(yaml_file), lines).validate()
    assert config.data.cache == "off" and config.data.fingerprint == "off"
    for bad, option in (({"cache": "maybe"}, "'cache'"), ({"cache_memory_mb": -5}, "'cache_memory_mb'"),
                        ({"cache_dir": {"a": 1}}, "'cache_dir'")):
        with pytest.raises(ConfigError, match=option) as err:
            RunConfig.from_dict({"data": "x", **bad}).validate()
        assert "\n" not in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", "x", "--cache", "sometimes"])
    assert exit_.value.code == 2 and "argument --cache: invalid choice: 'sometimes'" in capsys.readouterr().err


# ----------------------------------------------------------------------------- whole runs
TINY_CLI = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2",
            "num_heads=4", "--image-size", "32", "--batch-size", "8", "--workers", "0", "--quiet", "--epochs", "3",
            "--warmup-epochs", "1", "--lr", "0.01", "--eval-every", "1", "--augment", "--task", "cifar"]


def _record(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def _results(record: dict) -> list:
    return [(e["train_loss"], e["eval_accuracy"]) for e in record["curve"]]


def test_a_whole_run_is_bit_identical_with_and_without_the_cache(vtab_root, tmp_path):
    runs = {"off": ["--cache", "off"], "auto": [], "mmap": ["--cache-memory-mb", "0"],
            "plain off": ["--cache", "off", "--no-augment"], "plain auto": ["--no-augment"]}  # batches converted whole
    for name, extra in runs.items():
        assert main(["train", *TINY_CLI, "--data", str(vtab_root), "--out", str(tmp_path / name), *extra]) == 0
    records = {name: _record(tmp_path / name) for name in runs}
    assert _results(records["auto"]) == _results(records["off"]) == _results(records["mmap"])
    assert _results(records["plain auto"]) == _results(records["plain off"]) != _results(records["off"])
    assert records["auto"]["heads"] == records["off"]["heads"]
    caches = {name: record["data"]["cache"] for name, record in records.items()}
    assert caches["off"]["mode"] == "off" and caches["off"]["splits"]["train"]["storage"] == "off"
    assert {s["storage"] for s in caches["auto"]["splits"].values()} == {"memory"}
    assert caches["mmap"]["dir"] == str(tmp_path / "mmap" / "data_cache")
    assert {s["storage"] for s in caches["mmap"]["splits"].values()} == {"mmap"}
    assert all(Path(s["file"]).parent == tmp_path / "mmap" / "data_cache" for s in caches["mmap"]["splits"].values())
    entry = records["auto"]["curve"][0]
    assert 0 <= entry["data_seconds"] <= entry["seconds"] and 0 <= entry["eval_data_seconds"] <= entry["eval_seconds"]
    weights = {name: (tmp_path / name / "adapter" / "adapter.safetensors").read_bytes() for name in ("off", "auto")}
    assert weights["off"] == weights["auto"]


def test_a_run_started_with_the_cache_resumes_without_it(vtab_root, tmp_path):
    config = tiny_config(vtab_root, epochs=3, warmup_epochs=1, lr=0.01, augment=True, method="lora")

    def stop(epoch, entry):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config.replace(out=str(tmp_path / "cut")), callbacks=[stop])
    resumed = train(config.replace(out=str(tmp_path / "cut"), resume=True, data={"cache": "off"}))
    whole = train(config.replace(out=str(tmp_path / "whole"), data={"cache": "off"}))
    assert resumed["resumed_at_epochs"] == [1] and resumed["data"]["cache"]["mode"] == "off"
    assert _results(resumed) == _results(whole)
