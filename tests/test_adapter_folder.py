"""One owner of the adapter folder and one option coercion.

- every command that reads an adapter folder (eval, predict, serve, export, import) takes the folder a
  ``--random-init`` run on a name with a pretrained tag wrote (predict used to ask for options it does not have);
- every command applies the same sha256 rule to the backbone weights (eval used to only warn);
- run settings and method options coerce values by one set of rules (one table, both entry points);
- every method option is documented on its field; user-facing text cites no file outside the package.
"""
import json
import re
from pathlib import Path

import pytest
from safetensors.torch import save_file

from heartlora.adapters_io import ADAPTER_DIR, BACKBONE_NAME, resolve_adapter_dir
from heartlora.cli import main
from heartlora.config import ConfigError, RunConfig
from heartlora.data.synthetic import make_vtab
from heartlora.methods.base import get_method, registered
from heartlora.methods.factory import methods

TAGGED = "vit_tiny_patch16_224.augreg_in21k"  # a name whose tag names timm's pretrained weights
TINY = ["--model-kwargs", "patch_size=8", "embed_dim=48", "depth=2", "num_heads=4", "--image-size", "32",
        "--batch-size", "8", "--workers", "0", "--quiet", "--epochs", "1", "--warmup-epochs", "0", "--device", "cpu",
        "--no-check-images"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_vtab(root, tasks=("cifar",), n_train=16, n_val=8, n_test=8, image_size=32, num_classes=4)
    return root


@pytest.fixture(scope="module")
def tagged_run(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tagged"
    code = main(["train", "--model", TAGGED, "--random-init", *TINY, "--data", str(data_root), "--task", "cifar",
                 "--method", "heart-lora", "--ne", "1", "--opt", "score_epochs=1", "--out", str(out)])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def weights_run(data_root, tmp_path_factory):
    """A run on a local weights file (the tiny ViT's own random weights, saved)."""
    import timm

    folder = tmp_path_factory.mktemp("weights")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                              embed_dim=48, depth=2, num_heads=4)
    weights = folder / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    out = folder / "run"
    code = main(["train", "--model", "vit_tiny_patch16_224", "--weights", str(weights), *TINY, "--data", str(data_root),
                 "--task", "cifar", "--method", "lora", "--out", str(out)])
    assert code == 0
    return out, weights


def test_every_command_takes_the_folder_of_a_random_init_run_on_a_tagged_name(tagged_run, data_root, tmp_path, capsys):
    image = sorted((data_root / "cifar").rglob("*.jpg"))[0]
    assert main(["eval", "--adapter", str(tagged_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == TAGGED and 0 <= result["accuracy"] <= 100
    code = main(["predict", str(image), "--adapter", str(tagged_run), "--format", "jsonl", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["task"] == "tagged"
    assert main(["export", "--adapter", str(tagged_run), "--merged", str(tmp_path / "m.safetensors")]) == 0
    assert main(["export", "--adapter", str(tagged_run), "--to", "peft", str(tmp_path / "peft")]) == 0
    assert main(["import", "--from", "peft", str(tmp_path / "peft"), "--out", str(tmp_path / "imported")]) == 0
    capsys.readouterr()
    assert main(["eval", "--adapter", str(tmp_path / "imported"), "--data", str(data_root), "--task", "cifar",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(result["accuracy"])

    from heartlora.serve.multitask import MultiTask

    served = MultiTask.from_adapters({"a": str(tagged_run)})  # what `heartlora serve` builds
    assert served.tasks == ["a"] or list(served.tasks) == ["a"]


def test_every_command_applies_one_sha256_rule(weights_run, tmp_path, capsys):
    run, weights = weights_run
    other = tmp_path / "other.safetensors"
    tensors = {k: v for k, v in __import__("safetensors.torch", fromlist=["load_file"]).load_file(str(weights)).items()}
    tensors["cls_token"] = tensors["cls_token"] + 1.0  # other weights of the same shapes
    save_file(tensors, str(other))
    image = next(Path(json.loads((run / "run.json").read_text())["config"]["data"]["root"]).rglob("*.jpg"))
    commands = {
        "eval": ["eval", "--adapter", str(run), "--weights", str(other)],
        "predict": ["predict", str(image), "--adapter", str(run), "--weights", str(other)],
        "export": ["export", "--adapter", str(run), "--merged", str(tmp_path / "m.safetensors"), "--weights", str(other)],
        "serve": ["serve", "--adapter", str(run), "--weights", str(other), "--port", "0"],
    }
    for name, argv in commands.items():
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 1, (name, err)
        assert "differs from that of the weights the adapter was trained on" in err, (name, err)
        assert "Traceback" not in err
    assert main(["eval", "--adapter", str(run), "--weights", str(weights), "--json"]) == 0  # the right file, moved or not


def test_the_run_folder_wins_over_adapter_files_written_into_it(weights_run, tmp_path):
    run, _ = weights_run
    assert resolve_adapter_dir(run) == run / ADAPTER_DIR
    assert resolve_adapter_dir(run / ADAPTER_DIR) == run / ADAPTER_DIR
    code = main(["import", "--from", "peft", str(tmp_path), "--out", str(run)])
    assert code == 2  # never writes a second adapter into a run folder
    assert not (run / "adapter_config.json").exists() and not (run / BACKBONE_NAME).exists()


# ----- one coercion, two entry points ---------------------------------------------------------------
# (kind, value given, expected value or ConfigError): each row runs against a run setting and a method option
COERCION_TABLE = [
    ("bool", True, True), ("bool", "true", True), ("bool", "False", False), ("bool", "yes", True), ("bool", "off", False),
    ("bool", 2, ConfigError), ("bool", "2", ConfigError), ("bool", 1, ConfigError), ("bool", "1", ConfigError),
    ("bool", 0.0, ConfigError), ("bool", "maybe", ConfigError),
    ("int", 3, 3), ("int", "3", 3), ("int", 3.0, 3), ("int", 2.5, ConfigError), ("int", "2.5", ConfigError),
    ("int", True, ConfigError), ("int", "three", ConfigError),
    ("float", 0.5, 0.5), ("float", "1e-3", 1e-3), ("float", 2, 2.0), ("float", "nan", ConfigError),
    ("float", float("nan"), ConfigError), ("float", "inf", ConfigError), ("float", float("-inf"), ConfigError),
    ("float", True, ConfigError), ("float", "x", ConfigError),
]
# an option of each kind: (run setting, method, method option)
ENTRY_POINTS = {"bool": ("check_images", "heart-lora", "restart"), "int": ("epochs", "lora", "rank"),
                "float": ("lr", "lora", "scale")}


@pytest.mark.parametrize("kind,value,expected", COERCION_TABLE, ids=[f"{k}-{v!r}" for k, v, _ in COERCION_TABLE])
def test_one_coercion_table_for_run_settings_and_method_options(kind, value, expected):
    setting, method, option = ENTRY_POINTS[kind]
    outcomes = []
    for entry in ("run", "method"):
        try:
            if entry == "run":
                config = RunConfig.from_dict({setting: value})
                section = config.data if setting == "check_images" else config.schedule
                got = getattr(section, setting)
            else:
                got = getattr(get_method(method).make_config({option: value}), option)
        except ConfigError as err:
            got = ConfigError
            assert ("expected" in str(err)) and (setting in str(err) or option in str(err))
        outcomes.append(got)
    assert outcomes[0] == outcomes[1] == expected
    if expected not in (ConfigError,):
        assert all(type(o) is type(expected) for o in outcomes)  # ints stay ints, bools stay bools


def test_ints_stay_ints_in_an_int_or_word_option():
    config = get_method("heart-lora").make_config({"ne": "1"})
    assert config.ne == 1 and isinstance(config.ne, int)
    assert get_method("heart-lora").make_config({"ne": "auto"}).ne == "auto"


# ----- documented options, no citations of files users do not have ---------------------------------
@pytest.mark.parametrize("name", sorted(registered()))
def test_every_method_option_is_documented_on_its_field(name, capsys):
    docs = methods()[name]["option_docs"]
    assert [row["name"] for row in docs] == list(get_method(name).option_defaults())
    undocumented = [row["name"] for row in docs if not row["help"].strip()]
    assert not undocumented, f"{name}: options without a meaning: {undocumented}"
    assert main(["methods", name]) == 0
    out = capsys.readouterr().out
    for row in docs:
        assert row["name"] in out and row["help"][:30] in out
    if docs:
        assert "Options:" in (get_method(name).config_cls.__doc__ or "")


def test_no_user_facing_text_cites_a_file_outside_the_package():
    package = Path(__import__("heartlora").__file__).parent
    cited = [f"{p.relative_to(package)}:{i}" for p in package.rglob("*.py")
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if re.search(r"DESIGN|§", line)]
    assert not cited, cited
    from heartlora.cli import build_parser

    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions:
        for sub in action.choices.values():
            texts.append(sub.format_help())
    assert not any(re.search(r"DESIGN|§", text) for text in texts)


def test_capabilities_are_declared_by_methods_and_read_by_serving_and_peft_export():
    from heartlora.cli import build_parser

    servable = sorted(n for n, s in registered().items() if s.servable)
    exportable = sorted(n for n, s in registered().items() if s.peft_exportable)
    assert "lora" in servable and "linear" in servable and "adapter" not in servable
    assert "heart-lora" in exportable and "linear" not in exportable
    help_text = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert ", ".join(servable) in " ".join(help_text.split())
