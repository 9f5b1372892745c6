"""--amp auto: bf16 autocast where the CPU computes bf16 natively (AMX), fp32 elsewhere; said in the
record; exact resume under bf16."""
import pytest
import torch

from heartlora import precision
from heartlora.config import ConfigError, RunConfig
from heartlora.data.synthetic import make_vtab
from heartlora.engine.loop import train

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vtab")
    make_vtab(root, tasks=("cifar",), n_train=16, n_val=8, n_test=8, image_size=32, num_classes=4)
    return root


def config(vtab_root, **overrides) -> RunConfig:
    values = {"model": "vit_tiny_patch16_224", "model_kwargs": {"patch_size": 8, "embed_dim": 48, "depth": 2,
              "num_heads": 4}, "image_size": 32, "batch_size": 8, "workers": 0, "quiet": True, "data": str(vtab_root),
              "task": "cifar", "epochs": 3, "warmup_epochs": 1, "lr": 1e-2, "method": "heart-lora",
              "eval_every": 1}
    values.update(overrides)
    return RunConfig.from_dict(values)


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_cpu_and_the_record_says_why(vtab_root, monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (native, "patched: " + ("AMX" if native else "no AMX")))
    record = train(config(vtab_root, epochs=1))
    assert record["amp"] == {"dtype": "bf16" if native else "fp32", "enabled": native, "requested": "auto",
                             "reason": "patched: " + ("AMX" if native else "no AMX")}


def test_forced_choices_and_bad_values(vtab_root, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (False, "patched: no AMX"))
    decision = precision.resolve_amp("bf16", torch.device("cpu"))
    assert decision.enabled and "slower here" in decision.reason
    assert not precision.resolve_amp("off", torch.device("cpu")).enabled
    assert not precision.resolve_amp("none", torch.device("cpu")).enabled  # older spelling
    assert precision.resolve_amp("auto", torch.device("cuda")).enabled
    with pytest.raises(ConfigError, match="option 'amp'"):
        train(config(vtab_root, amp="fp16"))


def test_bf16_runs_are_reproducible_and_resume_exactly(vtab_root, tmp_path, monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_support", lambda: (True, "patched: AMX"))

    def stop(epoch, entry):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config(vtab_root, out=str(tmp_path / "a")), callbacks=[stop])
    resumed = train(config(vtab_root, out=str(tmp_path / "a"), resume=True))
    whole = train(config(vtab_root, out=str(tmp_path / "b")))
    again = train(config(vtab_root, out=str(tmp_path / "c")))
    keys = ("train_loss", "eval_accuracy", "lr")
    assert [[e[k] for k in keys] for e in resumed["curve"]] == [[e[k] for k in keys] for e in whole["curve"]]
    assert [[e[k] for k in keys] for e in again["curve"]] == [[e[k] for k in keys] for e in whole["curve"]]
    assert resumed["heads"] == whole["heads"] and resumed["amp"]["dtype"] == "bf16"
    from safetensors.torch import load_file

    a, b = (load_file(str(tmp_path / x / "adapter" / "adapter.safetensors")) for x in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
