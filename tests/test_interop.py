"""Adapters that leave heartlora: merged plain timm checkpoints, PEFT export / import, round trips."""
import copy
import json
import sys

import pytest
import timm
import torch
from safetensors.torch import load_file

from conftest import tiny_swin, tiny_vit
import heartlora
from heartlora.adapters_io import adapter_tensors, merge_and_unload
from heartlora.cli import main
from heartlora.config import ModelConfig
from heartlora.data.synthetic import make_vtab
from heartlora.engine.build import build_backbone, build_from_adapter_folder, new_classifier
from heartlora.interop.peft_io import from_peft, to_peft
from heartlora.interop.timm_io import export_merged, load_merged
from heartlora.methods import apply, get_state
from heartlora.methods.responsiveness import apply_head_selection

peft = pytest.importorskip("peft")

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* randomly initialised")

TIMM = {
    "vit": ("vit_tiny_patch16_224", dict(patch_size=8, embed_dim=48, depth=2, num_heads=4)),
    "swin": ("swin_tiny_patch4_window7_224", dict(patch_size=4, window_size=2, embed_dim=24, depths=(1, 1), num_heads=(2, 4))),
}
BUILD = {"vit": tiny_vit, "swin": tiny_swin}
TOL = 1e-5


def adapted(kind: str, method: str, heads_off=(), seed: int = 1, **options):
    """(plain backbone, the same backbone adapted with trained-looking tensors, in eval mode)."""
    base = BUILD[kind](seed=seed)
    model = copy.deepcopy(base)
    apply(model, method, **options)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    if heads_off:
        masks = [torch.tensor([h not in heads_off for h in range(g["num_heads"])]) for g in get_state(model).geometry]
        apply_head_selection(model, masks)
    return base, model.eval()


def differs_from_backbone(model, base, images):
    return (model(images) - base.eval()(images)).abs().max() > 1e-3


# ------------------------------------------------------------------------------ merge and unload
@pytest.mark.parametrize("kind,method,options,heads_off", [
    ("vit", "lora", {"scale": 10.0}, ()), ("vit", "heart-lora", {"ne": 2}, (0, 2)), ("vit", "bilora", {"rank": 4}, ()),
    ("vit", "bitfit", {}, ()), ("vit", "full", {}, ()), ("swin", "heart-lora", {}, (1,)), ("swin", "linear", {}, ()),
])
def test_merge_and_unload_is_a_plain_timm_model_with_equal_outputs(tmp_path, images, kind, method, options, heads_off):
    base, model = adapted(kind, method, heads_off, **options)
    expected = model(images)
    plain = heartlora.merge_and_unload(copy.deepcopy(model))
    fresh = BUILD[kind](seed=7)
    assert list(plain.state_dict()) == list(fresh.state_dict())  # keys exactly timm's, in timm's order
    assert not hasattr(plain, "heartlora_state") and all(p.requires_grad for p in plain.parameters())
    fresh.load_state_dict(plain.state_dict(), strict=True)
    assert (fresh.eval()(images) - expected).abs().max() <= TOL

    name, kwargs = TIMM[kind]
    path, meta_path = export_merged(model, tmp_path / "merged.safetensors", name=name, kwargs=kwargs, img_size=32,
                                    normalize="imagenet")
    meta = json.loads(meta_path.read_text())
    assert meta["model"] == name and meta["kwargs"]["num_classes"] == 5 and meta["pretrained_cfg_overlay"]["file"] == path.name
    # timm's own loader, with the file as the pretrained source (strict: the class count matches)
    overlay = {**meta["pretrained_cfg_overlay"], "file": str(path)}
    via_timm = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **meta["kwargs"]).eval()
    assert (via_timm(images) - expected).abs().max() <= TOL
    assert timm.data.resolve_data_config({}, model=via_timm)["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert (load_merged(meta_path).eval()(images) - expected).abs().max() <= TOL
    strict = timm.create_model(name, pretrained=False, **meta["kwargs"])
    strict.load_state_dict(load_file(str(path)), strict=True)
    assert (strict.eval()(images) - expected).abs().max() <= TOL
    assert (model(images) - expected).abs().max() == 0  # the exported model itself is untouched


@pytest.mark.parametrize("method", ["vpt-deep", "adapter", "adaptformer"])
def test_methods_that_cannot_merge_say_so(method):
    _, model = adapted("vit", method)
    with pytest.raises(ValueError, match=f"method '{method}' cannot be merged into the backbone"):
        merge_and_unload(model)
    assert get_state(model).method == method  # nothing was changed


# ------------------------------------------------------------------------------------ PEFT export
CASES = [("vit", "lora", {"scale": 10.0, "targets": "q,k,v"}, ()), ("vit", "bilora", {"bits": 1, "rank": 4}, ()),
         ("vit", "heart-lora", {"ne": 2, "scale": 0.1}, (1, 3)), ("swin", "lora", {"scale": 10.0}, ()),
         ("swin", "heart-lora", {"scale": 10.0}, (0,))]


@pytest.mark.parametrize("kind,method,options,heads_off", CASES)
def test_peft_export_loads_in_peft_with_equal_outputs(tmp_path, images, kind, method, options, heads_off):
    base, model = adapted(kind, method, heads_off, **options)
    expected = model(images)
    to_peft(model, tmp_path / "peft", base_model_name=TIMM[kind][0])
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    layer = next(m for m in model.modules() if hasattr(m, "lora_B"))
    n, r = len(layer.targets), layer.rank
    assert config["peft_type"] == "LORA" and config["r"] == n * r and config["target_modules"] == ["qkv"]
    assert config["lora_alpha"] / config["r"] == pytest.approx(layer.scale)  # PEFT's scaling is our s
    assert config["modules_to_save"] == (["head"] if kind == "vit" else ["head.fc"])
    peft_model = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft")).eval()
    out = peft_model(images)
    assert (out - expected).abs().max() <= TOL
    assert differs_from_backbone(model, base, images)
    if heads_off:  # switched-off heads are exact zero rows of B (q rows of the first layer here)
        tensors = load_file(str(tmp_path / "peft" / "adapter_model.safetensors"))
        b = next(v for k, v in tensors.items() if k.endswith("lora_B.weight"))
        site = layer.site
        for head in heads_off:
            assert not b[list(site.rows("q", head))].any()


def test_peft_export_refuses_other_methods_and_existing_files(tmp_path):
    _, model = adapted("vit", "adapter")
    with pytest.raises(ValueError, match="method 'adapter' has no PEFT LoRA counterpart"):
        to_peft(model, tmp_path / "a")
    _, model = adapted("vit", "lora")
    to_peft(model, tmp_path / "b")
    with pytest.raises(FileExistsError, match="adapter_model.safetensors: already exists"):
        to_peft(model, tmp_path / "b")


# ------------------------------------------------------------------------------------ PEFT import
def peft_trained_one_step(base, images, labels, **lora):
    config = peft.LoraConfig(target_modules=["qkv"], modules_to_save=["head"], lora_dropout=0.0, **lora)
    peft_model = peft.get_peft_model(copy.deepcopy(base), config)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    torch.nn.functional.cross_entropy(peft_model(images), labels).backward()
    optimizer.step()
    return peft_model.eval()


@pytest.mark.parametrize("kind,lora", [("vit", dict(r=4, lora_alpha=8)), ("vit", dict(r=3, lora_alpha=5, use_rslora=True)),
                                       ("vit", dict(r=4, lora_alpha=8, layers_to_transform=[1], layers_pattern="blocks")),
                                       ("vit", dict(r=4, lora_alpha=8, rank_pattern={"blocks.1.attn.qkv": 2},
                                                    alpha_pattern={"blocks.1.attn.qkv": 32})),
                                       ("swin", dict(r=2, lora_alpha=16))])
def test_peft_import_of_a_peft_trained_adapter_has_equal_outputs(tmp_path, images, labels, kind, lora):
    base = BUILD[kind](seed=2)
    peft_model = peft_trained_one_step(base, images, labels, **lora)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    expected = peft_model(images)
    model = from_peft(copy.deepcopy(base), tmp_path / "peft").eval()
    state = get_state(model)
    # PEFT trains one A shared by q, k and v: kept as it is, repeated per target (rank R)
    assert state.method == "lora" and tuple(state.options["targets"]) == ("q", "k", "v") and state.options["rank"] == lora["r"]
    assert state.options["scale"] == (1.0 if "alpha_pattern" in lora else pytest.approx(  # per-module scalings: folded into B
        lora["lora_alpha"] / (lora["r"] ** 0.5 if lora.get("use_rslora") else lora["r"])))
    assert (model(images) - expected).abs().max() <= TOL
    assert differs_from_backbone(model, base, images)


@pytest.mark.parametrize("kind,method,options,heads_off", [CASES[0], CASES[2], CASES[4]])
def test_round_trip_heartlora_peft_heartlora_leaves_tensors_equal(tmp_path, images, kind, method, options, heads_off):
    base, model = adapted(kind, method, heads_off, **options)
    to_peft(model, tmp_path / "peft")
    back = from_peft(copy.deepcopy(base), tmp_path / "peft").eval()
    before, after = adapter_tensors(model), adapter_tensors(back)
    assert list(before) == list(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    a, b = get_state(model), get_state(back)
    assert (b.method, b.options, b.head_masks) == (a.method, a.options, a.head_masks)
    assert torch.equal(back(images), model(images))


def test_round_trip_of_bilora_gives_lora_with_the_dequantised_weights(tmp_path, images):
    base, model = adapted("vit", "bilora", rank=4)
    to_peft(model, tmp_path / "peft")
    back = from_peft(copy.deepcopy(base), tmp_path / "peft").eval()
    assert get_state(back).method == "lora" and get_state(back).options["bits"] == 32
    assert (back(images) - model(images)).abs().max() <= TOL


def test_peft_import_refuses_what_it_cannot_represent(tmp_path, images, labels):
    base = tiny_vit(seed=2)
    config = peft.LoraConfig(r=2, target_modules=["qkv", "proj"], modules_to_save=["head"])
    peft.get_peft_model(copy.deepcopy(base), config).save_pretrained(str(tmp_path / "proj"))
    with pytest.raises(ValueError, match="adapts 'blocks.0.attn.proj', which is not an attention qkv"):
        from_peft(copy.deepcopy(base), tmp_path / "proj")
    config = peft.LoraConfig(r=2, target_modules=["qkv"], use_dora=True)
    peft.get_peft_model(copy.deepcopy(base), config).save_pretrained(str(tmp_path / "dora"))
    with pytest.raises(ValueError, match="'use_dora' is set"):
        from_peft(copy.deepcopy(base), tmp_path / "dora")


# ------------------------------------------------------------------------------------ CLI
TINY = ["--model", "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2", "num_heads=4",
        "--image-size", "32", "--batch-size", "8", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory):
    """A 2-epoch Heart-LoRA run (one head per layer switched off after epoch 1) on a tiny VTAB task."""
    root = tmp_path_factory.mktemp("interop")
    make_vtab(root / "data", tasks=("cifar",), n_train=16, n_val=8, n_test=8, image_size=32, num_classes=4)
    out = root / "run"
    code = main(["train", *TINY, "--data", str(root / "data"), "--task", "cifar", "--method", "heart-lora", "--ne", "1",
                 "--scale", "10", "--epochs", "2", "--warmup-epochs", "1", "--lr", "0.01", "--eval-every", "2",
                 "--out", str(out)])
    assert code == 0
    return root, out


def test_cli_export_merged_and_peft_then_import_and_score(heart_run, tmp_path, images, capsys):
    root, run = heart_run
    model, resolved = build_from_adapter_folder(run)
    backbone = resolved.record
    expected = model(images)
    assert main(["export", "--adapter", str(run), "--merged", str(tmp_path / "m" / "model.safetensors")]) == 0
    merged = load_merged(tmp_path / "m" / "model.json").eval()
    assert (merged(images) - expected).abs().max() <= TOL
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["class_names"] is None or len(meta["class_names"]) == meta["num_classes"] == get_state(model).num_classes
    assert main(["export", "--adapter", str(run), "--merged", str(tmp_path / "m" / "model.safetensors")]) == 2
    assert "already exists" in capsys.readouterr().err

    assert main(["export", "--adapter", str(run / "adapter"), "--to", "peft", str(tmp_path / "peft")]) == 0
    reference = build_backbone(ModelConfig(name=backbone["model"], kwargs=backbone["kwargs"], drop_path=0.0), 32,
                               backbone["seed"])  # the run's own seeded random backbone, as plain timm
    new_classifier(reference, get_state(model).num_classes)  # PEFT's modules_to_save replace it
    peft_model = peft.PeftModel.from_pretrained(reference, str(tmp_path / "peft")).eval()
    assert (peft_model(images) - expected).abs().max() <= TOL

    assert main(["import", "--from", "peft", str(tmp_path / "peft"), "--out", str(tmp_path / "imported")]) == 0
    imported, imported_backbone = build_from_adapter_folder(tmp_path / "imported")
    assert get_state(imported).method == "heart-lora" and imported_backbone.model.name == backbone["model"]
    assert (imported(images) - expected).abs().max() <= TOL
    capsys.readouterr()
    code = main(["analyze", "responsiveness", str(tmp_path / "imported"), "--data", str(root / "data"), "--task", "cifar",
                 "--out", str(tmp_path / "analysis"), "--score-batches", "1"])
    assert code == 0, capsys.readouterr().err
    rows = (tmp_path / "analysis" / "responsiveness.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 4 and (tmp_path / "analysis" / "score_correlation.csv").is_file()


def test_cli_import_of_a_peft_trained_adapter(tmp_path, images, labels, capsys):
    base = tiny_vit(seed=2)
    peft_model = peft_trained_one_step(base, images, labels, r=4, lora_alpha=8)
    peft_model.save_pretrained(str(tmp_path / "peft"))
    args = ["import", "--from", "peft", str(tmp_path / "peft"), "--out", str(tmp_path / "ours"), "--model",
            "vit_tiny_patch16_224", "--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2", "num_heads=4",
            "--image-size", "32"]
    assert main(args) == 0
    ours = from_peft(copy.deepcopy(base), tmp_path / "peft")
    stored = load_file(str(tmp_path / "ours" / "adapter.safetensors"))
    assert all(torch.equal(stored[k], v) for k, v in adapter_tensors(ours).items())
    backbone = json.loads((tmp_path / "ours" / "backbone.json").read_text())
    assert backbone["img_size"] == 32 and backbone["imported_from"]["format"] == "peft"
    assert main(args) == 2 and "already holds an adapter" in capsys.readouterr().err
    tagged = [*args[:5], str(tmp_path / "other"), "--model", "vit_tiny_patch16_224.augreg_in21k", *args[8:]]
    assert main(tagged) == 2 and "--pretrained" in capsys.readouterr().err


def test_cli_export_refusals_exit_2_and_write_nothing(heart_run, tmp_path, capsys, monkeypatch):
    root, run = heart_run
    assert main(["export", "--adapter", str(run), "--merged", str(tmp_path / "x.pth")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert main(["export", "--adapter", str(run), "--to", "peft"]) == 2
    assert "give the output folder" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "peft", None)  # PEFT not installed
    assert main(["export", "--adapter", str(run), "--to", "peft", str(tmp_path / "p")]) == 1
    assert "pip install heartlora[peft]" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
