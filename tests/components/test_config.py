"""The params file validates into typed objects; every bad key, type or value is named."""

from pathlib import Path

import pytest
import yaml

from components.config import LossConfig, PipelineConfig, load_config, parse_override
from components.errors import ConfigError
from components.stages.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_repo_params_and_presets_validate():
    cfg = load_config(ROOT / "params.yaml")
    assert isinstance(cfg, PipelineConfig)
    assert cfg.data.source.kind == "idx" and cfg.ray.num_workers == 2
    for preset in sorted((ROOT / "presets").glob("*.yaml")):
        assert isinstance(load_config(ROOT / "params.yaml", preset.stem), PipelineConfig)


def test_preset_and_overrides_merge_in_order():
    cfg = load_config(ROOT / "params.yaml", "tiny", ["pretrain.epochs=3", "model.width=0.5"])
    assert cfg.pretrain.epochs == 3  # override beats preset
    assert cfg.pretrain.batch_size == 64  # preset beats params.yaml
    assert cfg.model.width == 0.5
    assert cfg.pretrain.optim.lr_scaling == "sqrt"  # untouched key keeps its params.yaml value


def test_parse_override_reads_yaml_values():
    assert parse_override("a.b=0.1") == {"a": {"b": 0.1}}
    assert parse_override("x=[1, 2]") == {"x": [1, 2]}
    assert parse_override("y=null") == {"y": None}
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_override("no-equals-sign")


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("pretrain.batch_sise=64", "pretrain.batch_sise: unknown key"),
        ("pretrain.batch_size=abc", "pretrain.batch_size"),
        ("pretrain.batch_size=1", "pretrain.batch_size"),
        ("subsets.fractions=[0.0]", "subsets.fractions"),
        ("augment.crop_scale=[0.9, 0.1]", "crop_scale"),
        ("model.arch=resnet99", "model.arch"),
        ("data.source.kind=tarball", "data.source.kind"),
        ("ray.num_workers=0", "ray.num_workers"),
        ("pretrain.loss.name=xent", "pretrain.loss.name"),
        ("pretrain.loss.margin=0", "pretrain.loss.margin"),
        ("pretrain.loss.margin=-1.0", "pretrain.loss.margin"),
        ("pretrain.loss.l2_normalize=maybe", "pretrain.loss.l2_normalize"),
        ("pretrain.loss.temperature=0.1", "pretrain.loss.temperature: unknown key"),
        ("pretrain.loss=nt_xent", "pretrain.loss"),
    ],
)
def test_bad_values_name_the_key(override, named):
    with pytest.raises(ConfigError, match=named.replace("[", r"\[")):
        load_config(ROOT / "params.yaml", overrides=[override])


def test_missing_or_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("pretrain: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(ROOT / "params.yaml", preset="no-such-preset")


def test_flat_and_digest():
    cfg = load_config(ROOT / "params.yaml")
    flat = cfg.flat()
    assert flat["pretrain.optim.base_lr"] == cfg.pretrain.optim.base_lr
    other = load_config(ROOT / "params.yaml", overrides=["pretrain.epochs=7"])
    assert cfg.digest("pretrain") != other.digest("pretrain")
    assert cfg.digest("data") == other.digest("data")


def test_loss_defaults_to_nt_xent_with_l2_norm_and_is_set_by_overrides():
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.pretrain.loss == LossConfig()
    assert (cfg.pretrain.loss.name, cfg.pretrain.loss.l2_normalize) == ("nt_xent", True)
    cfg = load_config(ROOT / "params.yaml", overrides=[
        "pretrain.loss.name=margin_triplet", "pretrain.loss.l2_normalize=false",
        "pretrain.loss.margin=0.5"])
    assert cfg.pretrain.loss == LossConfig(name="margin_triplet", l2_normalize=False, margin=0.5)
    cfg = load_config(ROOT / "params.yaml", overrides=["pretrain.loss={name: nt_logistic}"])
    assert cfg.pretrain.loss == LossConfig(name="nt_logistic")


def test_the_loss_is_ordinary_config_and_changes_the_pretrain_digest():
    """``pretrain.loss`` is dumped (MLflow params, run names); any other loss changes the
    pretraining digest and round-trips."""
    cfg = load_config(ROOT / "params.yaml")
    assert cfg.flat()["pretrain.loss.name"] == "nt_xent"
    explicit = load_config(ROOT / "params.yaml", overrides=["pretrain.loss.name=nt_xent"])
    assert explicit == cfg and explicit.digest() == cfg.digest()
    for override in ("pretrain.loss.name=nt_logistic", "pretrain.loss.l2_normalize=false",
                     "pretrain.loss.margin=2.0"):
        other = load_config(ROOT / "params.yaml", overrides=[override])
        assert other.digest("pretrain") != cfg.digest("pretrain"), override
        assert PipelineConfig.model_validate(other.model_dump(mode="json")) == other


def test_cli_rejects_bad_config_with_exit_2(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"pretrain": {"epochs": -1}}))
    assert main(["params", "--params", str(params)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "pretrain.epochs" in err


def test_cli_params_prints_merged_config(capsys):
    assert main(["params", "--params", str(ROOT / "params.yaml"), "--preset", "tiny"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["pretrain"]["epochs"] == 2


def test_every_subcommand_has_help(capsys):
    from components.stages.cli import build_parser, extra_commands

    parser, handlers = build_parser(extra_commands())
    for name in handlers:
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: simclr" in capsys.readouterr().out


@pytest.mark.parametrize("overrides, named", [
    (["pretrain.batch_size=63"], "not divisible by ray.num_workers=2"),
    (["pretrain.batch_size=4", "ray.num_workers=4"], "1 image(s) per worker"),
    (["pretrain.max_images=32"], "pretrain.max_images: 32 is smaller than pretrain.batch_size=64"),
    (["subsets.fractions=[0.1, 0.1]"], "subsets.fractions"),
    (["subsets.fractions=[0.0]"], "subsets.fractions"),
    (["subsets.fractions=[1.5]"], "subsets.fractions"),
    (["data.transfer=[{kind: digits, name: a}, {kind: digits, name: a}]"], "duplicate source names"),
    (["model.stem=imagenet"], "model.stem: imagenet needs images of >= 32 px"),
])
def test_cross_field_rules_are_checked_at_load(overrides, named):
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "params.yaml", "tiny", overrides)
    assert named in str(info.value) and "\n" not in str(info.value)
    assert not str(info.value).startswith("invalid configuration: <root>")


def test_bad_batch_through_simclr_exits_2_with_one_line_and_no_mlflow_run(tmp_path):
    """Through the real entry point: refused while loading, before any MLflow store or run."""
    import os
    import subprocess
    import sys

    simclr = Path(sys.executable).parent / "simclr"
    store = tmp_path / "mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{store}"}
    done = subprocess.run([str(simclr), "pretrain", "--params", str(ROOT / "params.yaml"),
                           "--preset", "tiny", "--set", "pretrain.batch_size=63"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "pretrain.batch_size: 63" in lines[0]
    assert not store.exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("text, named", [
    ("pretrain: {epochs: [1,\n", "not valid YAML"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("pretrain: {epochs: -1}\n", "pretrain.epochs"),
    ("pretrain: {epoch: 3}\n", "pretrain.epoch: unknown key"),
])
def test_malformed_preset_is_one_error_line_exit_2(tmp_path, capsys, text, named):
    preset = tmp_path / "broken.yaml"
    preset.write_text(text)
    assert main(["params", "--params", str(ROOT / "params.yaml"), "--preset", str(preset)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and named in err
    missing = main(["params", "--params", str(ROOT / "params.yaml"), "--preset", "no-such"])
    assert missing == 2 and "preset 'no-such'" in capsys.readouterr().err


def test_params_file_update_keeps_comments_and_key_order(tmp_path):
    from components.config import apply_to_params_file

    params = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    params.write_text(original)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "tiny.yaml").write_text((ROOT / "presets" / "tiny.yaml").read_text())

    cfg = apply_to_params_file(params, "tiny", ["pretrain.epochs=3"])
    text = params.read_text()
    assert cfg.pretrain.epochs == 3 and cfg == load_config(params)
    comments = [line.split("#", 1)[1] for line in original.splitlines() if "#" in line]
    assert all(comment in text for comment in comments)
    assert list(yaml.safe_load(text)) == list(yaml.safe_load(original))  # top-level key order
    assert yaml.safe_load(text)["pretrain"]["batch_size"] == 64
    before = params.stat().st_mtime_ns
    apply_to_params_file(params, "tiny", ["pretrain.epochs=3"])  # no change: not rewritten
    assert params.stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match="pretrain.batch_size"):
        apply_to_params_file(params, None, ["pretrain.batch_size=63"])
    assert params.read_text() == text  # refused before anything is written


def test_the_study_section_is_validated_and_named_in_errors():
    from components.config import StudyConfig, config_from_dict

    assert config_from_dict({}).study == StudyConfig(scale="small", max_concurrent_trials=None)
    with pytest.raises(ConfigError, match=r"study\.scale"):
        config_from_dict({"study": {"scale": "huge"}})
    with pytest.raises(ConfigError, match=r"study\.max_concurrent_trials"):
        config_from_dict({"study": {"max_concurrent_trials": 0}})
