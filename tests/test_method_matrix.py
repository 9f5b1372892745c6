"""Every property, against every registered method × {ViT, Swin} × {fp32, 1 bit where the method
quantises}. A method that cannot run on a backbone is listed in UNSUPPORTED below with the
reason, and test_unsupported_backbone asserts its clear error; nothing is skipped silently."""
import copy

import pytest
import torch
from safetensors import safe_open

import heartlora
from heartlora.methods import registered
from heartlora.methods.base import adapter_layers

from conftest import BACKBONES

# Per-method options for the matrix (kept small so the tests stay fast) and the backbones it
# supports. Methods with a ``bits`` option also run quantised.
METHOD_CASES = {
    "lora": {},
    "bilora": {"rank": 4},
    "heart-lora": {"ne": 1},
    "heart-lora-layer": {"ne": 1},
    "full": {},
    "linear": {},
    "bitfit": {},
    "vpt-shallow": {"prompts": 3},
    "vpt-deep": {"prompts": 3},
    "adapter": {"dim": 4},
    "adaptformer": {"dim": 4},  # adapter reads the MLP's normalised input (default)
    "bi-adaptformer": {"dim": 4},  # adapter reads the residual stream (default), no biases
    # a fixed NOAH sub-network (every branch used in some layer; the supernet is in test_noah.py)
    "noah": {"subnet": {"prompt": [2, 1], "lora": [1, 2], "adapter": [2, 1]}},
}
# (method, backbone) -> why it cannot run. These cases are not skipped: test_unsupported_backbone
# asserts that applying the method raises a ValueError naming the method and the backbone.
_NO_TOKENS = "Swin has no class token / global token sequence to insert prompt tokens into"
UNSUPPORTED = {
    ("vpt-shallow", "swin"): _NO_TOKENS,
    ("vpt-deep", "swin"): _NO_TOKENS,
    ("noah", "swin"): "NOAH's VPT-Deep branch needs a token sequence; " + _NO_TOKENS,
}


def _cases():
    for method, spec in sorted(registered().items()):
        options = METHOD_CASES.get(method, {})
        bit_choices = [32, 1] if "bits" in spec.option_defaults() else [None]
        for backbone in BACKBONES:
            if (method, backbone) in UNSUPPORTED:
                continue  # asserted by test_unsupported_backbone instead
            for bits in bit_choices:
                opts = dict(options)
                if bits is not None:
                    opts["bits"] = bits
                if backbone == "swin" and "ne" in opts:
                    opts.pop("ne")
                    opts["fraction"] = 0.3  # heads differ per stage: round(0.3·H) per layer
                yield pytest.param(method, backbone, opts, id=f"{method}-{backbone}-{bits or 'na'}")


CASES = list(_cases())


def test_every_registered_method_has_matrix_options():
    missing = sorted(set(registered()) - set(METHOD_CASES))
    assert not missing, f"add test options for {missing} to METHOD_CASES"


def _adapted(method, backbone, opts, seed=0):
    model = BACKBONES[backbone](seed)
    torch.manual_seed(1)
    if (method, backbone) in UNSUPPORTED:
        # never a silent skip: the method must refuse the backbone with a clear error
        with pytest.raises(ValueError, match=rf"(?s)'{method}'.*{type(model).__name__}"):
            heartlora.apply(model, method, **opts)
        return None
    heartlora.apply(model, method, **opts)
    return model


UNSUPPORTED_CASES = [
    pytest.param(method, backbone, id=f"{method}-{backbone}") for method, backbone in sorted(UNSUPPORTED)
]


def test_unsupported_table_names_registered_methods_and_backbones():
    assert {m for m, _ in UNSUPPORTED} <= set(registered())
    assert {b for _, b in UNSUPPORTED} <= set(BACKBONES)


@pytest.mark.parametrize("method,backbone", UNSUPPORTED_CASES)
def test_unsupported_backbone(method, backbone):
    """A method that cannot run on a backbone raises a ValueError naming both."""
    model = _adapted(method, backbone, dict(METHOD_CASES.get(method, {})))
    assert model is None


def _switch_off_some_heads(model):
    """Apply a deterministic selection for head-selecting methods (scores = head index)."""
    state = heartlora.get_state(model)
    if state.options.get("select") is None:
        return
    scores = [torch.arange(s["num_heads"], dtype=torch.float32) for s in state.geometry]
    heartlora.select_and_apply(model, scores)


def _train_steps(model, images, labels, steps=2):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    return optimizer


@pytest.mark.parametrize("method,backbone,opts", CASES)
def test_identity_at_init(method, backbone, opts, images):
    reference = BACKBONES[backbone](0).eval()
    model = _adapted(method, backbone, opts).eval()
    spec = registered()[method]
    with torch.no_grad():
        diff = (model(images) - reference(images)).abs().max().item()
    if spec.identity_at_init(heartlora.get_state(model).options):
        assert diff == 0.0
    else:
        assert diff > 0.0  # the method says it does not start at the backbone (e.g. quantised B)


@pytest.mark.parametrize("method,backbone,opts", CASES)
def test_gradients_only_where_trainable(method, backbone, opts, images, labels):
    model = _adapted(method, backbone, opts)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable, "a method must train something"
    _switch_off_some_heads(model)
    optimizer = _train_steps(model, images, labels, steps=1)
    # second backward: zero-initialised factors (LoRA's B) have moved, so every factor sees a gradient
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no gradient"
        else:
            assert param.grad is None, f"frozen {name} got a gradient"
            assert torch.equal(param, frozen[name]), f"frozen {name} changed"


@pytest.mark.parametrize("method,backbone,opts", CASES)
def test_save_load_roundtrip(method, backbone, opts, images, labels, tmp_path):
    model = _adapted(method, backbone, opts)
    _train_steps(model, images, labels, steps=1)
    _switch_off_some_heads(model)
    _train_steps(model, images, labels, steps=1)
    model.eval()
    heartlora.save_adapter(model, tmp_path)
    fresh = BACKBONES[backbone](0)
    heartlora.load_adapter(fresh, tmp_path)
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(images), model(images))
    # the file holds exactly what adapter_bytes counts
    with safe_open(str(tmp_path / "adapter.safetensors"), "pt") as f:
        stored = sum(f.get_tensor(k).numel() * f.get_tensor(k).element_size() for k in f.keys())
    assert stored == heartlora.adapter_bytes(model) == heartlora.adapter_bytes(fresh)
    assert heartlora.trainable_parameters(fresh) == heartlora.trainable_parameters(model)


@pytest.mark.parametrize("method,backbone,opts", CASES)
def test_merge_parity(method, backbone, opts, images, labels):
    model = _adapted(method, backbone, opts)
    if not registered()[method].mergeable:
        with pytest.raises(ValueError, match="cannot be merged"):
            heartlora.merge(model)
        return
    _train_steps(model, images, labels, steps=2)
    _switch_off_some_heads(model)
    _train_steps(model, images, labels, steps=1)
    model.eval()
    weights = copy.deepcopy({n: p.detach().clone() for n, p in model.named_parameters()})
    with torch.no_grad():
        unmerged = model(images)
        heartlora.merge(model)
        merged = model(images)
        heartlora.unmerge(model)
        restored = model(images)
    assert (merged - unmerged).abs().max().item() <= 1e-5
    assert torch.equal(restored, unmerged)
    for name, param in model.named_parameters():
        assert torch.equal(param, weights[name]), f"unmerge did not restore {name}"


@pytest.mark.parametrize("method,backbone,opts", CASES)
def test_layers_report_their_stored_bytes(method, backbone, opts):
    """Each adapter layer's closed-form byte count equals the bytes of what it stores."""
    model = _adapted(method, backbone, opts)
    _switch_off_some_heads(model)
    for name, layer in adapter_layers(model).items():
        stored = sum(t.numel() * t.element_size() for t in layer.stored_tensors().values())
        assert stored == layer.stored_nbytes(), name
