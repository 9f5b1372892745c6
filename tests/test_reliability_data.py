"""Reliability of heartlora.data (issue #11, items 1, 9, 10, 11): image modes decode faithfully,
list paths stay inside their root, content fingerprints notice changed images, non-UTF-8 names
are reported, not crashed on.

Each CLI case asserts the exit code, that the one-line message names the file/line/option, that
no traceback is printed, and that nothing under the test's folder changed except ``--out``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, TiffImagePlugin

from heartlora.cli import main
from heartlora.data import DataError, compare_fingerprints, content_fingerprint, describe_changes, load_task, verify
from heartlora.data.decode import ALPHA_BACKGROUND, UnsupportedImage, to_rgb
from heartlora.data.images import load_image
from heartlora.data.roots import escapes_root
from heartlora.data.synthetic import make_fewshot, make_folder, make_vtab
from heartlora.data.verify import format_verify_report

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")

TRAIN = ["train", "--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2",
         "num_heads=4", "--image-size", "16", "--batch-size", "4", "--workers", "0", "--quiet", "--epochs", "1"]
GRADIENT = np.linspace(0, 65535, 16 * 16).round().reshape(16, 16).astype(np.uint16)  # 16-bit ramp


def tree_state(root: Path, skip: Path | None = None) -> dict[str, tuple]:
    """Every file and folder under ``root`` (but ``skip``) with size and modification time."""
    state = {}
    for path in root.rglob("*"):
        if skip is not None and (path == skip or skip in path.parents):
            continue
        stat = path.lstat()
        state[path.relative_to(root).as_posix()] = (path.is_dir(), stat.st_size, stat.st_mtime_ns)
    return state


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_clean_failure(code: int, err: str, expected: list[str]) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("heartlora: error:")]
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.fixture
def vtab(tmp_path: Path) -> tuple[Path, Path]:
    root = make_vtab(tmp_path / "data", tasks=("cifar",), n_train=8, n_val=4, n_test=6, image_size=16, num_classes=3)
    return root, root / "cifar"


# ============================================================ item 1: every image mode to 8-bit RGB

def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _expected_ramp(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.rint((values.astype(np.float64) - lo) * 255 / (hi - lo)).astype(np.uint8)


@pytest.mark.parametrize("suffix", ["png", "tif", "pgm"])
def test_16bit_greyscale_decodes_to_its_gradient(tmp_path, suffix):
    path = _save(Image.fromarray(GRADIENT), tmp_path / f"ramp.{suffix}")
    assert Image.open(path).mode in ("I;16", "I")  # PGM with maxval > 255 opens as I
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[..., 0], _expected_ramp(GRADIENT, 0, 65535))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    assert rgb.min() == 0 and rgb.max() == 255 and (rgb == 255).mean() < 0.05  # was: almost all white


def test_signed_16bit_tiff_uses_its_declared_range(tmp_path):
    signed = (GRADIENT.astype(np.int32) - 32768).astype(np.int16)
    info = TiffImagePlugin.ImageFileDirectory_v2()
    info[339] = 2  # SampleFormat: signed integer
    path = _save(Image.fromarray(signed.view(np.uint16)), tmp_path / "signed.tif", tiffinfo=info)
    assert Image.open(path).mode == "I"
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], _expected_ramp(signed, -32768, 32767))


def test_float_greyscale_in_unit_range(tmp_path):
    values = (GRADIENT / 65535).astype(np.float32)
    path = _save(Image.fromarray(values), tmp_path / "float.tif")
    assert Image.open(path).mode == "F"
    np.testing.assert_array_equal(np.asarray(load_image(path))[..., 0], _expected_ramp(values, 0, 1))


def test_transparency_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 1] = 255  # green everywhere, hidden where transparent
    rgba[:, :2, 3] = 255  # left half opaque
    rgba[:, 2, 3] = 128  # one column half transparent
    out = np.asarray(load_image(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")))
    assert (out[:, :2] == (0, 255, 0)).all()
    assert (out[:, 3] == ALPHA_BACKGROUND).all()  # was: green (the hidden colour) under alpha 0
    assert np.allclose(out[:, 2], (127, 255, 127), atol=1)

    la = Image.merge("LA", [Image.new("L", (4, 4), 0), Image.fromarray(rgba[..., 3])])
    out = np.asarray(load_image(_save(la, tmp_path / "la.png")))
    assert (out[:, :2] == 0).all() and (out[:, 3] == 255).all()  # black line art stays visible

    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.paste(0, (0, 0, 2, 4))
    path = _save(palette, tmp_path / "p.png", transparency=0)
    assert Image.open(path).info.get("transparency") == 0
    out = np.asarray(load_image(path))
    assert (out[:, :2] == 255).all() and (out[:, 2:] == (200, 10, 10)).all()

    grey16 = np.full((4, 4), 257 * 100, np.uint16)
    grey16[:, :2] = 1000
    path = _save(Image.fromarray(grey16), tmp_path / "t16.png", transparency=1000)  # tRNS: sample 1000 is clear
    out = np.asarray(load_image(path))
    assert (out[:, :2] == 255).all() and (out[:, 2:] == 100).all()


@pytest.mark.parametrize("mode, color", [("CMYK", (0, 200, 50, 30)), ("L", 77), ("1", 1), ("RGB", (1, 2, 3))])
def test_plain_modes_use_pil_conversion(tmp_path, mode, color):
    image = Image.new(mode, (4, 4), color)
    path = _save(image, tmp_path / "img.tif")
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("make, expected", [
    (lambda: Image.fromarray(GRADIENT.astype(np.float32)),
     r"mode F with values in \[0, 65535\]; expected float values in \[0, 1\]"),
    (lambda: Image.fromarray(GRADIENT.astype(np.int32)), r"mode I with 32-bit samples"),
], ids=["float out of range", "32-bit integer"])
def test_unfaithful_images_are_refused(tmp_path, make, expected):
    path = _save(make(), tmp_path / "bad.tif")
    with pytest.raises(UnsupportedImage, match=expected):
        load_image(path)
    with pytest.raises(UnsupportedImage, match="image mode 'La' has no faithful conversion"):
        to_rgb(Image.new("La", (2, 2)))


def test_16bit_image_through_load_task_is_a_gradient(vtab):
    root, task_dir = vtab
    Image.fromarray(GRADIENT).save(task_dir / "images" / "test" / "000001.jpg", format="PNG")  # PIL reads by content
    task = load_task("vtab", str(root), "cifar", image_size=16, check_images=True)
    pixels = task.eval[1][0]
    assert pixels.shape == (3, 16, 16)
    assert pixels.min() < 0.05 and pixels.max() > 0.95 and (pixels > 0.99).float().mean() < 0.1
    rows = pixels[0].mean(dim=1)
    assert (rows[1:] >= rows[:-1] - 1e-3).all()  # the ramp runs top to bottom
    assert verify("vtab", str(root), "cifar")["ok"]


def test_unconvertible_image_fails_verify_and_train_naming_file_and_line(vtab, tmp_path, capsys):
    root, task_dir = vtab
    bad = task_dir / "images" / "test" / "000002.jpg"
    Image.fromarray(GRADIENT.astype(np.float32)).save(bad, format="TIFF")
    before = tree_state(tmp_path)

    code, out, err = run_cli(capsys, "data", "verify", root, "--task", "cifar")
    assert code == 1 and "Traceback" not in out + err
    assert f"{bad} (listed in {task_dir / 'test.txt'}:3): cannot convert image to 8-bit RGB" in out
    assert "result: FAILED (1 problem)" in out
    report = verify("vtab", str(root), "cifar")
    assert [p["kind"] for p in report["problems"]] == ["unsupported_image"]

    code, _, err = run_cli(capsys, *TRAIN, "--data", root, "--task", "cifar", "--out", tmp_path / "run")
    assert_clean_failure(code, err, [str(bad), "test.txt:3", "mode F with values in [0, 65535]"])
    assert not (tmp_path / "run").exists() and tree_state(tmp_path) == before


# ============================================================ item 9: list paths stay inside their root

@pytest.mark.parametrize("path, escapes", [
    ("images/a.jpg", False), ("images/../a.jpg", False), ("./a.jpg", False), ("a..b.jpg", False),
    ("../a.jpg", True), ("images/../../a.jpg", True), ("..", True), ("/etc/a.jpg", True), ("//host/a.jpg", True),
    ("C:/data/a.jpg", True),
])
def test_escapes_root_is_lexical(path, escapes):
    assert escapes_root(path) is escapes


def _outside_image(tmp_path: Path) -> Path:
    outside = tmp_path / "elsewhere" / "secret.jpg"
    outside.parent.mkdir()
    outside.write_bytes(b"not an image: verify must not open it")
    return outside


@pytest.mark.parametrize("form", ["dotdot", "absolute"])
def test_paths_outside_the_root_are_refused_unless_allowed(vtab, tmp_path, capsys, form):
    root, task_dir = vtab
    outside = _outside_image(tmp_path)
    written = "../../elsewhere/secret.jpg" if form == "dotdot" else str(outside)
    lines = (task_dir / "test.txt").read_text().splitlines()
    lines[3] = f"{written} 0"
    (task_dir / "test.txt").write_text("\n".join(lines) + "\n")
    before = tree_state(tmp_path)

    with pytest.raises(DataError, match=rf"test\.txt:4: image path '{written}' is outside the image root .*"
                                        r"--allow-outside-root"):
        load_task("vtab", str(root), "cifar", image_size=16)
    report = verify("vtab", str(root), "cifar")
    assert not report["ok"] and [p["kind"] for p in report["problems"]] == ["outside_root"]
    assert report["problems"][0]["line"] == 4  # and the garbage file outside was never opened (no 'unreadable')

    code, out, err = run_cli(capsys, "data", "verify", root, "--task", "cifar")
    assert code == 1 and "test.txt:4: image path" in out and "--allow-outside-root" in out and "Traceback" not in err
    code, _, err = run_cli(capsys, *TRAIN, "--data", root, "--task", "cifar", "--out", tmp_path / "run")
    assert_clean_failure(code, err, ["test.txt:4", written, "--allow-outside-root"])
    assert not (tmp_path / "run").exists() and tree_state(tmp_path) == before

    # allowed explicitly: the outside file is read (and here found unreadable)
    code, out, _ = run_cli(capsys, "data", "verify", root, "--task", "cifar", "--allow-outside-root")
    assert code == 1 and "secret.jpg" in out and "cannot read image" in out and "outside the image root" not in out
    Image.new("RGB", (16, 16)).save(outside, format="JPEG")
    code, out, _ = run_cli(capsys, "data", "verify", root, "--task", "cifar", "--allow-outside-root")
    assert code == 0 and "result: OK" in out
    task = load_task("vtab", str(root), "cifar", image_size=16, allow_outside_root=True)
    assert task.eval.paths[3] == str(outside) if form == "absolute" else task.eval.paths[3].endswith(written)


def test_symlinks_inside_the_root_are_followed(vtab, tmp_path):
    root, task_dir = vtab
    store = tmp_path / "store"
    store.mkdir()
    image = task_dir / "images" / "test" / "000000.jpg"
    shutil.move(image, store / "000000.jpg")
    image.symlink_to(store / "000000.jpg")  # a dataset assembled from a shared store: the written path is inside
    assert verify("vtab", str(root), "cifar")["ok"]
    assert load_task("vtab", str(root), "cifar", image_size=16).eval[0][0].shape == (3, 16, 16)


def test_image_root_probe_skips_lines_outside_the_root(tmp_path):
    root = make_fewshot(tmp_path / "fs", "oxford_flowers102", shots=(1,), seeds=(0,), n_test=4, image_size=16)
    test_list = root / "oxford_flowers102" / "annotations" / "test_meta.list"
    test_list.write_text("../outside.jpg 0\n" + test_list.read_text())
    report = verify("fewshot", str(root), "oxford_flowers102", shots=1, seed=0)
    assert [p["kind"] for p in report["problems"]] == ["outside_root"]  # the other lines resolve under jpg/


# ============================================================ item 10: content fingerprints

def test_fingerprint_names_changed_images(tmp_path):
    root = make_folder(tmp_path / "folder", classes=2, per_split=(4, 0, 4), image_size=16)
    task = load_task("folder", str(root), image_size=16)
    saved = content_fingerprint(task)
    assert saved["images"] == 8 and saved["method"] == "stat" and len(saved["sha256"]) == 64
    assert set(saved["files"]) == {Path(p).relative_to(root).as_posix() for p in task.train.paths + task.eval.paths}
    json.dumps(saved)  # storable anywhere
    assert compare_fingerprints(saved, content_fingerprint(task)) == []

    rewritten, grown, removed = (root / "train/class_0/0000.jpg", root / "train/class_1/0001.png",
                                 root / "test/class_0/0000.jpg")
    data = bytearray(rewritten.read_bytes())
    data[-3] ^= 0xFF
    rewritten.write_bytes(bytes(data))  # same size, new contents
    stat = rewritten.stat()
    os.utime(rewritten, ns=(stat.st_atime_ns, saved["files"]["train/class_0/0000.jpg"][1] + 1_000_000))
    with open(grown, "ab") as handle:
        handle.write(b"\0")
    removed.unlink()
    changes = compare_fingerprints(saved, content_fingerprint(task))
    assert changes == ["test/class_0/0000.jpg (not found now)",
                       "train/class_0/0000.jpg (modified (same size, modification time changed))",
                       f"train/class_1/0001.png (size {grown.stat().st_size - 1} -> {grown.stat().st_size} bytes)"]
    assert describe_changes(changes, shown=2) == f"3 images changed: {changes[0]}, {changes[1]}, … and 1 more"


def test_fingerprint_survives_moving_the_data_and_content_mode_survives_copies(tmp_path):
    root = make_folder(tmp_path / "a", classes=2, per_split=(4, 0, 2), image_size=16)
    saved = content_fingerprint(load_task("folder", str(root), image_size=16))
    shutil.copytree(root, tmp_path / "b")  # copy2: times preserved, as rsync -a / cp -a do
    moved = load_task("folder", str(tmp_path / "b"), image_size=16)
    assert content_fingerprint(moved) == saved

    hashed = content_fingerprint(load_task("folder", str(root), image_size=16), content=True)
    assert all(len(record) == 3 for record in hashed["files"].values())
    shutil.copytree(root, tmp_path / "c", copy_function=shutil.copyfile)  # plain cp -r: new times
    copied = load_task("folder", str(tmp_path / "c"), image_size=16)
    assert compare_fingerprints(saved, content_fingerprint(copied))  # stat sees new times
    assert compare_fingerprints(hashed, content_fingerprint(copied, content=True)) == []  # bytes are equal
    target = tmp_path / "c" / "test" / "class_1" / "0001.png"
    data = bytearray(target.read_bytes())
    data[-5] ^= 1
    target.write_bytes(bytes(data))
    assert compare_fingerprints(hashed, content_fingerprint(copied, content=True)) == [
        "test/class_1/0001.png (contents differ)"]


# ============================================================ item 11: non-UTF-8 names in folders

def _non_utf8_name(folder: Path, name: bytes) -> Path:
    path = Path(os.fsdecode(os.fsencode(folder) + b"/" + name))
    try:
        if name.endswith(b".png"):
            Image.new("RGB", (16, 16)).save(path, format="PNG")
        else:
            path.mkdir()
    except (OSError, ValueError):
        pytest.skip("this file system refuses non-UTF-8 names")
    return path


def test_non_utf8_file_name_is_a_one_line_problem(tmp_path, capsys):
    root = make_folder(tmp_path / "folder", classes=2, per_split=(4, 0, 2), image_size=16)
    _non_utf8_name(root / "train" / "class_0", b"caf\xe9.png")
    before = tree_state(tmp_path)
    shown = "'class_0/caf\\xe9.png' has a name that is not valid UTF-8"

    with pytest.raises(DataError, match=r"train: 'class_0/caf\\xe9\.png' has a name that is not valid UTF-8") as info:
        load_task("folder", str(root), image_size=16)
    str(info.value).encode("utf-8")  # printable anywhere
    report = verify("folder", str(root))
    assert not report["ok"] and [p["kind"] for p in report["problems"]] == ["bad_name"]
    format_verify_report(report).encode("utf-8")
    assert json.loads(json.dumps(report))["problems"][0]["message"].startswith(f"{root / 'train'}: {shown}")

    code, out, err = run_cli(capsys, "data", "verify", root, "--kind", "folder")
    assert code == 1 and shown in out and "Traceback" not in err
    code, out, err = run_cli(capsys, "data", "verify", root, "--kind", "folder", "--json")
    assert code == 1 and json.loads(out)["problems"][0]["kind"] == "bad_name" and "Traceback" not in err
    code, _, err = run_cli(capsys, *TRAIN, "--data", root, "--data-kind", "folder", "--out", tmp_path / "run")
    assert_clean_failure(code, err, [str(root / "train"), shown])
    assert not (tmp_path / "run").exists() and tree_state(tmp_path) == before


def test_non_utf8_class_folders(tmp_path):
    root = make_folder(tmp_path / "folder", classes=2, per_split=(4, 0, 2), image_size=16)
    bad = _non_utf8_name(root / "test", b"cl\xffss")
    report = verify("folder", str(root))
    assert [p["kind"] for p in report["problems"]] == ["bad_name"] and "'cl\\xffss'" in report["problems"][0]["message"]
    bad.rmdir()
    for name in ("class_0", "class_1"):
        shutil.rmtree(root / "train" / name)
    _non_utf8_name(root / "train", b"\xe9t\xe9")
    with pytest.raises(DataError, match=r"train: '\\xe9t\\xe9' has a name that is not valid UTF-8"):
        load_task("folder", str(root), image_size=16)


def test_verify_prints_a_non_utf8_data_root(tmp_path, capsys):
    root = make_folder(_non_utf8_name(tmp_path, b"d\xe9j\xe0"), classes=2, per_split=(2, 0, 2), image_size=16)
    code, out, err = run_cli(capsys, "data", "verify", root, "--kind", "folder")  # capsys's stdout encodes strictly
    assert code == 0 and "d\\xe9j\\xe0" in out and "result: OK" in out and "Traceback" not in err
    code, out, _ = run_cli(capsys, "data", "verify", root, "--kind", "folder", "--json")
    assert code == 0 and os.fsencode(json.loads(out)["directory"]) == os.fsencode(root)


# ============================================================ class names of custom VTAB-layout tasks

def test_custom_vtab_task_carries_class_names(tmp_path):
    make_vtab(tmp_path, tasks=("cifar",), n_train=4, n_val=2, n_test=4, image_size=16, num_classes=3)
    custom = tmp_path / "my_task"
    (tmp_path / "cifar").rename(custom)
    (custom / "classes.txt").write_text("cat\n\ndog\nbird\n", encoding="utf-8")
    task = load_task("vtab", str(tmp_path), "my_task", image_size=16)
    assert task.classes == ["cat", "dog", "bird"] and task.num_classes == 3
    assert verify("vtab", str(tmp_path), "my_task")["classes"] == ["cat", "dog", "bird"]
    (custom / "classes.txt").write_text("cat\ndog\ncat\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"classes\.txt:3: class 'cat' repeats line 1"):
        load_task("vtab", str(tmp_path), "my_task", image_size=16)
    (custom / "classes.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"classes\.txt: cannot read .*expected a UTF-8 text file"):
        load_task("vtab", str(tmp_path), "my_task", image_size=16)
