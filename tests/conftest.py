"""Tiny random timm backbones for fast CPU tests."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import timm
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.pop("HEARTLORA_LOG", None)  # the tests' runs log to experiment trackers only where a test asks
# tiny models: one thread beats two (less threading overhead, no contention between workers)
torch.set_num_threads(1)

NUM_CLASSES = 5


def tiny_vit(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(pretrained=False, num_classes=NUM_CLASSES, img_size=32, patch_size=8, embed_dim=48,
                  depth=2, num_heads=4)
    kwargs.update(overrides)
    return timm.create_model("vit_tiny_patch16_224", **kwargs)


def tiny_swin(seed: int = 0, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = dict(pretrained=False, num_classes=NUM_CLASSES, img_size=32, patch_size=4, window_size=2,
                  embed_dim=24, depths=(1, 1), num_heads=(2, 4))
    kwargs.update(overrides)
    return timm.create_model("swin_tiny_patch4_window7_224", **kwargs)


BACKBONES = {"vit": tiny_vit, "swin": tiny_swin}


@pytest.fixture
def images():
    generator = torch.Generator().manual_seed(123)
    return torch.randn(4, 3, 32, 32, generator=generator)


@pytest.fixture
def labels():
    return torch.tensor([0, 1, 2, 3])


# ----- tiny runs through the engine -----------------------------------------------------------------
TINY_RUN = {
    "model": "vit_tiny_patch16_224",
    "model_kwargs": {"patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 4},
    "image_size": 32, "batch_size": 8, "workers": 0, "quiet": True, "eval_every": 1,
}


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory):
    """A synthetic VTAB-layout 'cifar' task: 24 train800, 8 val200, 16 test images, 4 classes."""
    from heartlora.data.synthetic import make_vtab

    root = tmp_path_factory.mktemp("vtab")
    make_vtab(root, tasks=("cifar",), n_train=24, n_val=8, n_test=16, image_size=32, num_classes=4)
    return root


def tiny_config(root, **values):
    """RunConfig of a tiny ViT run on ``root``'s 'cifar' task; ``values`` as flat or nested keys."""
    from heartlora.config import RunConfig

    return RunConfig.from_dict({**TINY_RUN, "data": str(root), "task": "cifar", **values})


def interrupted_then_resumed(config, tmp_path, after_epoch: int):
    """(record of a run killed after ``after_epoch`` and resumed, record of the uninterrupted run)."""
    from heartlora.engine.loop import train

    def stop(epoch, entry):
        if epoch == after_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config.replace(out=str(tmp_path / "interrupted")), callbacks=[stop])
    resumed = train(config.replace(out=str(tmp_path / "interrupted"), resume=True))
    return resumed, train(config.replace(out=str(tmp_path / "whole")))


def tiny_base(root, warmup_epochs: int = 1):
    """RunConfig of a tiny ViT on ``root`` (VTAB layout; the task is set per cell), 2 epochs, evaluated each."""
    from heartlora.config import DataConfig, ModelConfig, RunConfig, ScheduleConfig

    return RunConfig(
        model=ModelConfig(name="vit_tiny_patch16_224", kwargs={"patch_size": 8, "embed_dim": 48, "depth": 2,
                                                               "num_heads": 4}, drop_path=0.0),
        data=DataConfig(kind="vtab", root=str(root), image_size=32, workers=0, check_images=False),
        schedule=ScheduleConfig(epochs=2, warmup_epochs=warmup_epochs, batch_size=8, eval_every=1),
        device="cpu", quiet=True,
    )


def load_benchmark(script: str, module_name: str, *also_loaded: str, folder: str = "benchmarks"):
    """Import ``<folder>/<script>`` (a benchmark, or a file of ``scripts/``) as ``module_name`` for a
    module-scoped fixture (``yield from``); afterwards forget it and the modules of that folder it
    imported itself (``also_loaded``)."""
    path = Path(__file__).resolve().parents[1] / folder / script
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    yield module
    for name in (module_name, *also_loaded):
        sys.modules.pop(name, None)
