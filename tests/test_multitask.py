"""MultiTask: one frozen backbone, many adapters; a mixed batch equals each adapter alone."""
import json

import pytest
import torch

from heartlora.serve.adapters import ServeWarning
from heartlora.serve.multitask import MultiTask, MultiTaskQKV, UnknownTaskError

from serve_fixtures import TASKS, alone, backbone, backbone_record, make_adapter, make_tasks

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")
TOL = 1e-5
# fp32 logits of a few units: the dense routing sums in another order than the adapter alone, so allow
# float32 rounding relative to the magnitude too (1e-5 · |logit|), not an absolute 1e-5 only
RTOL = 1e-5


@pytest.fixture(scope="module")
def task_dirs(tmp_path_factory):
    return make_tasks(tmp_path_factory.mktemp("tasks"))


@pytest.fixture(scope="module")
def references(task_dirs):
    return {name: alone(task_dirs[name], TASKS[name][2]) for name in TASKS}


def _batch(n: int, seed: int = 7) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _check(model, references, images, tasks):
    out = model(images, tasks)
    with torch.no_grad():
        expected = {name: ref(images) for name, ref in references.items()}
    assert out.logits.shape == (len(tasks), max(TASKS[t][2] for t in tasks))
    for i, (task, row) in enumerate(zip(tasks, out.per_sample())):
        assert row.shape == (TASKS[task][2],)
        torch.testing.assert_close(row, expected[task][i], atol=TOL, rtol=RTOL)
        assert out.mask[i].sum() == TASKS[task][2] and torch.isinf(out.logits[i, TASKS[task][2]:]).all()
    return out


@torch.no_grad()
@pytest.mark.parametrize("routing", ["segments", "dense"])
def test_mixed_batch_equals_each_adapter_alone_in_any_order(task_dirs, references, routing):
    model = MultiTask(backbone(), task_dirs, routing=routing)
    assert model.tasks == list(TASKS)
    tasks = ["flowers", "dtd", "pets", "dtd", "pets", "flowers", "flowers", "dtd", "pets"]
    images = _batch(len(tasks))
    _check(model, references, images, tasks)
    for seed in (1, 2):
        order = torch.randperm(len(tasks), generator=torch.Generator().manual_seed(seed))
        _check(model, references, images[order], [tasks[i] for i in order])
    _check(model, references, images[:4], ["pets"] * 4)  # one task: only its columns are used
    _check(model, references, images[:3], ["dtd", "pets", "dtd"])  # a subset of the tasks


@torch.no_grad()
def test_the_backbone_is_held_once_and_switched_off_heads_stay_zero(task_dirs):
    plain = backbone()
    base_bytes = sum(p.numel() for p in plain.parameters())
    model = MultiTask(backbone(), task_dirs)
    assert sum(p.numel() for p in model.parameters()) == base_bytes  # headless backbone, no copies
    layers = [m for m in model.modules() if isinstance(m, MultiTaskQKV)]
    assert len(layers) == 2
    # columns: flowers q,v rank 4 (8), dtd q,k,v rank 2 (6), pets q,v rank 3 (6)
    assert all(layer.down.shape == (20, 48) and layer.up_t.shape == (20, 144) for layer in layers)
    dtd = slice(8, 14)
    head_dim = 12
    for layer, mask in zip(layers, TASKS["dtd"][3]):
        for head, on in enumerate(mask):
            rows = [t * 48 + head * head_dim + r for t in range(3) for r in range(head_dim)]
            assert (layer.up_t[dtd, rows].abs().sum() > 0) == on


@torch.no_grad()
@pytest.mark.parametrize("routing", ["segments", "dense"])
def test_add_and_remove_tasks_while_serving(task_dirs, references, routing):
    model = MultiTask(backbone(), {"flowers": task_dirs["flowers"]}, routing=routing)
    images = _batch(6)
    _check(model, references, images[:2], ["flowers", "flowers"])
    model.add_task("pets", task_dirs["pets"])
    model.add_task("dtd", task_dirs["dtd"])
    _check(model, references, images, ["dtd", "flowers", "pets", "pets", "dtd", "flowers"])
    model.remove_task("flowers")
    assert model.tasks == ["pets", "dtd"]
    _check(model, references, images[:4], ["dtd", "pets", "pets", "dtd"])
    with pytest.raises(UnknownTaskError, match="unknown task 'flowers'; loaded tasks: pets, dtd"):
        model(images[:1], ["flowers"])
    model.add_task("flowers", task_dirs["flowers"])
    _check(model, references, images, ["flowers", "dtd", "pets", "flowers", "pets", "dtd"])
    with pytest.raises(ValueError, match="already loaded"):
        model.add_task("dtd", task_dirs["dtd"])
    with pytest.raises(ValueError, match="task name"):
        model.add_task("a b", task_dirs["dtd"])
    model.remove_task("dtd")
    model.remove_task("pets")
    _check(model, references, images[:2], ["flowers", "flowers"])


@torch.no_grad()
def test_linear_probes_share_the_backbone_too(task_dirs, references, tmp_path):
    probe = make_adapter(tmp_path / "probe", "linear", {}, 4, None, seed=9)
    model = MultiTask(backbone(), {"probe": probe, "dtd": task_dirs["dtd"]})
    references = {"probe": alone(probe, 4), "dtd": references["dtd"]}
    images = _batch(4)
    out = model(images, ["probe", "dtd", "dtd", "probe"])
    expected = {name: ref(images) for name, ref in references.items()}
    for i, task in enumerate(["probe", "dtd", "dtd", "probe"]):
        torch.testing.assert_close(out.per_sample()[i], expected[task][i], atol=TOL, rtol=RTOL)


def test_a_mismatched_adapter_is_refused_with_the_file_named(task_dirs, tmp_path):
    model = MultiTask(backbone(), {"flowers": task_dirs["flowers"]})
    other_geometry = make_adapter(tmp_path / "heads2", "lora", {"rank": 2}, 3, None, model=backbone(num_heads=2))
    with pytest.raises(ValueError, match=r"heads2/adapter_config.json: attention block 0 .* num_heads=2"):
        model.add_task("heads2", other_geometry)
    other_seed = make_adapter(tmp_path / "seed5", "lora", {"rank": 2}, 3, None, record=backbone_record(seed=5))
    with pytest.raises(ValueError, match=r"seed5/backbone.json: this adapter was trained on another backbone \(seed=5"):
        model.add_task("seed5", other_seed)
    record = backbone_record()
    record["weights_sha256"] = "ab" * 32
    other_weights = make_adapter(tmp_path / "weights", "lora", {"rank": 2}, 3, None, record=record)
    with pytest.raises(ValueError, match=r"weights/backbone.json: .*weights_sha256='abab"):
        model.add_task("weights", other_weights)
    assert model.tasks == ["flowers"]


@pytest.mark.parametrize("method,options", [("vpt-deep", {"prompts": 2}), ("adapter", {"dim": 4}), ("bitfit", {})])
def test_methods_that_change_the_backbone_are_refused(tmp_path, method, options):
    import heartlora
    from heartlora.engine.build import new_classifier

    model = backbone()
    heartlora.apply(model, method, **options)
    new_classifier(model, 3)
    heartlora.save_adapter(model, tmp_path / method)
    with pytest.raises(ValueError, match=rf"adapter_config.json: method '{method}' cannot share a frozen backbone"):
        MultiTask(backbone(), {"x": tmp_path / method})


def test_from_adapters_rebuilds_the_backbone_and_names_classes(task_dirs, tmp_path):
    model = MultiTask.from_adapters(task_dirs)
    assert model.task("dtd").class_names[:2] == ["dtd-class0", "dtd-class1"]
    out = model(_batch(2), ["dtd", "pets"])
    top = model.top_k(out, 3)
    assert [len(t) for t in top] == [3, 2]  # pets has 2 classes
    assert top[1][0]["class"].startswith("pets-class") and abs(sum(t["probability"] for t in top[1]) - 1) < 1e-5
    assert all(a["probability"] >= b["probability"] for a, b in zip(top[0], top[0][1:]))
    # no class names anywhere: label indices, with a warning
    bare = make_adapter(tmp_path / "bare", "lora", {"rank": 2}, 3, None, record=backbone_record())
    with pytest.warns(ServeWarning, match="labels are shown as indices"):
        adapter = model.add_task("bare", bare)
    assert adapter.class_names == ["0", "1", "2"]
    described = {d["name"]: d for d in model.describe()}
    assert described["dtd"]["heads_switched_off"] == 2 and described["pets"]["bits"] == 2


def test_class_names_fall_back_to_the_run_task_folder(tmp_path):
    from heartlora.data.synthetic import make_vtab

    data = make_vtab(tmp_path / "data", tasks=("cifar",), n_train=2, n_val=1, n_test=1, num_classes=3)
    (data / "cifar" / "classes.txt").write_text("apple\nbanana\ncherry\n")
    run = tmp_path / "run"
    make_adapter(run / "adapter", "lora", {"rank": 2}, 3, None, record=backbone_record())
    (run / "run.json").write_text(json.dumps({"config": {"data": {"kind": "vtab", "root": str(data), "task": "cifar"}}}))
    model = MultiTask(backbone(), {"fruit": run})
    assert model.task("fruit").class_names == ["apple", "banana", "cherry"]


def test_the_model_refuses_training_mode_and_direct_backbone_calls(task_dirs):
    model = MultiTask(backbone(), {"pets": task_dirs["pets"]})
    with pytest.raises(ValueError, match="for inference"):
        model.train()
    with pytest.raises(RuntimeError, match="inside MultiTask"):
        model.backbone(_batch(1))
    with pytest.raises(ValueError, match="one per image"):
        model(_batch(2), ["pets"])


@torch.no_grad()
def test_swin_windows_are_routed_to_their_sample(tmp_path):
    from conftest import tiny_swin

    def swin():
        return tiny_swin(0, num_classes=0)

    specs = {"a": ("lora", {"rank": 2}, 3), "b": ("heart-lora", {"rank": 3, "fraction": 0.5}, 5)}
    dirs = {n: make_adapter(tmp_path / n, m, o, c, None, seed=i + 3, model=swin())
            for i, (n, (m, o, c)) in enumerate(specs.items())}
    references = {}
    for name, (_, _, classes) in specs.items():
        import heartlora
        from heartlora.engine.build import new_classifier

        ref = swin()
        new_classifier(ref, classes)
        references[name] = heartlora.load_adapter(ref, dirs[name]).eval()
    images = _batch(4, seed=3)
    tasks = ["b", "a", "a", "b"]
    for routing in ("segments", "dense"):
        out = MultiTask(swin(), dirs, routing=routing)(images, tasks)
        for i, task in enumerate(tasks):
            torch.testing.assert_close(out.per_sample()[i], references[task](images)[i], atol=TOL, rtol=RTOL)
