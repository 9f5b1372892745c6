"""`heartlora predict`: folders, list files, CSV / JSON lines, unreadable images among good ones."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from heartlora.cli import main
from heartlora.data.transforms import build_transform
from heartlora.serve.inputs import ImageError, open_image

from serve_fixtures import TASKS, alone, make_tasks

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")


@pytest.fixture(scope="module")
def task_dirs(tmp_path_factory):
    return make_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Five good images (two formats, one in a sub-folder, odd sizes) and one corrupt JPEG."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    names = ["a.png", "b.jpg", "c.png", "sub/d.jpg", "sub/e.png"]
    for i, name in enumerate(names):
        size = (32, 32) if i % 2 == 0 else (40, 27)
        Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image, not listed")
    return root


def _expected(task_dirs, task, path):
    model = alone(task_dirs[task], TASKS[task][2])
    x = build_transform(32, "none")(Image.open(path).convert("RGB"))[None]
    with torch.no_grad():
        return torch.softmax(model(x), -1)[0]


def test_predict_a_folder_to_csv_reports_the_corrupt_image(task_dirs, folder, tmp_path, capsys):
    out = tmp_path / "pred.csv"
    code = main(["predict", str(folder), "--task", f"flowers={task_dirs['flowers']}", "--task",
                 f"pets={task_dirs['pets']}", "--top-k", "3", "--out", str(out), "--batch-size", "4",
                 "--amp", "off"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{folder / 'broken.jpg'}: cannot read image (not an image PIL can read" in err
    assert "5 of 6 images predicted for 2 task(s)" in err and "1 unreadable" in err
    rows = list(csv.DictReader(out.open()))
    assert [(r["path"].replace(str(folder) + "/", ""), r["task"]) for r in rows] == [
        (name, task) for name in ["a.png", "b.jpg", "broken.jpg", "c.png", "sub/d.jpg", "sub/e.png"]
        for task in ("flowers", "pets")]
    for row in rows:
        if row["path"].endswith("broken.jpg"):
            assert row["error"].startswith(f"{folder / 'broken.jpg'}: cannot read image") and row["label_1"] == ""
            continue
        assert row["error"] == ""
        probs = _expected(task_dirs, row["task"], row["path"])
        order = probs.argsort(descending=True).tolist()
        k = min(3, TASKS[row["task"]][2])
        assert [int(row[f"label_{i + 1}"]) for i in range(k)] == order[:k]
        assert [row[f"class_{i + 1}"] for i in range(k)] == [f"{row['task']}-class{c}" for c in order[:k]]
        for i in range(k):
            assert abs(float(row[f"probability_{i + 1}"]) - probs[order[i]].item()) < 1e-5
        if k < 3:  # pets has 2 classes: the third column set is empty
            assert row["label_3"] == row["class_3"] == row["probability_3"] == ""


def test_predict_a_list_file_with_tasks_to_json_lines(task_dirs, folder, tmp_path, capsys):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# image [task]\n{folder / 'a.png'} dtd\n\n{folder / 'sub/e.png'}\n{folder / 'c.png'} pets\n")
    code = main(["predict", "--list", str(listing), "--task", f"dtd={task_dirs['dtd']}", "--task",
                 f"pets={task_dirs['pets']}", "--top-k", "1", "--format", "jsonl", "--quiet", "--amp", "off"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [(r["path"].split("/")[-1], r["task"]) for r in rows] == [
        ("a.png", "dtd"), ("e.png", "dtd"), ("e.png", "pets"), ("c.png", "pets")]
    for row in rows:
        probs = _expected(task_dirs, row["task"], row["path"])
        assert len(row["top"]) == 1 and row["top"][0]["label"] == int(probs.argmax())
        assert abs(row["top"][0]["probability"] - probs.max().item()) < 1e-5


def test_predict_with_one_adapter_names_the_task_after_the_run(task_dirs, folder, tmp_path, capsys):
    code = main(["predict", str(folder / "a.png"), "--adapter", str(task_dirs["dtd"]), "--top-k", "2"])
    captured = capsys.readouterr()
    assert code == 0
    header, row = captured.out.splitlines()
    assert header.startswith("path,task,label_1,class_1,probability_1,label_2") and ",dtd," in row


def test_predict_usage_and_data_errors(task_dirs, folder, tmp_path, capsys):
    dtd = f"dtd={task_dirs['dtd']}"
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(folder), "--task", "dtd"])
    assert exc.value.code == 2
    assert main(["predict", "--task", dtd]) == 2  # no images
    existing = tmp_path / "exists.csv"
    existing.write_text("keep me")
    assert main(["predict", str(folder), "--task", dtd, "--out", str(existing)]) == 2
    assert existing.read_text() == "keep me"
    listing = tmp_path / "bad.txt"
    listing.write_text(f"{folder / 'a.png'} nosuchtask\n")
    assert main(["predict", "--list", str(listing), "--task", dtd]) == 1
    assert f"{listing}:1: unknown task 'nosuchtask'" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--task", dtd]) == 1
    assert "no images in this folder" in capsys.readouterr().err
    assert main(["predict", str(folder / "a.png"), "--task", f"x={tmp_path / 'nowhere'}"]) == 1
    assert "adapter folder not found" in capsys.readouterr().err


def test_open_image_refuses_what_it_cannot_decode(folder, tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "missing.png")
    data = (folder / "a.png").read_bytes()
    with pytest.raises(ImageError, match="cannot decode the PNG data"):
        open_image(data[: len(data) // 2])
    with pytest.raises(ImageError, match="image is 32x32 pixels; the limit is 100 pixels"):
        open_image(data, max_pixels=100)
    assert open_image(data).size == (32, 32)
