"""Config: validation names the key at fault, overrides, the resolved config next to artifacts."""

import pytest
from typer.testing import CliRunner

from fdkd.pipeline.cli import app
from fdkd.pipeline.config import ConfigError, apply_override, dump_config, load_config


def test_default_config_loads():
    cfg = load_config()
    assert cfg.distill.method == "auto" and cfg.teacher.modality == "image" and cfg.student_modality == "audio"


def test_unknown_key_is_named(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("distill:\n  fd:\n    w_lowx: 3\n")
    with pytest.raises(ConfigError, match=r"distill\.fd\.w_lowx: unknown key"):
        load_config(p)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match=r"distill\.optim\.epochs"):
        load_config(None, ["distill.optim.epochs=many"])
    with pytest.raises(ConfigError, match=r"distill\.method"):
        load_config(None, ["distill.method=magic"])


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["distill.fd.w_low=10", "distill.bidirectional=true", "data.avdigits.snr_db=[0, 5]"])
    assert cfg.distill.fd.w_low == 10.0 and cfg.distill.bidirectional is True
    assert cfg.data.avdigits.snr_db == (0.0, 5.0)
    with pytest.raises(ConfigError, match="key=value"):
        apply_override({}, "distill.method")
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override({"seed": 1}, "seed.x=2")


def test_on_off_switches_take_yaml_booleans_and_auto_picks_nhwc_on_x86(monkeypatch):
    from fdkd.pipeline import accel

    # YAML reads a bare on/off as a boolean: `--set accel.channels_last=on` must still mean "on"
    assert load_config(None, ["accel.channels_last=on"]).accel.channels_last == "on"
    assert load_config(None, ["accel.channels_last=off", "accel.amp=off"]).accel.amp == "off"
    with pytest.raises(ConfigError, match=r"accel\.amp"):
        load_config(None, ["accel.amp=on"])  # amp has no "on"
    cfg = load_config(None, ["accel.device=cpu"]).accel
    for machine, nhwc in (("x86_64", True), ("AMD64", True), ("aarch64", False), ("arm64", False)):
        monkeypatch.setattr(accel.platform, "machine", lambda m=machine: m)
        assert accel.setup(cfg).channels_last is nhwc, machine
        assert accel.setup(cfg.model_copy(update={"channels_last": "off"})).channels_last is False


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("sets", [
    [],
    ["distill.fd.cut=7", "distill.method=dkd", "threads=3", "seed=11", "runs_dir=/tmp/elsewhere"],
    ["validate.gates.int8_min_agree_pct=95.5", "validate.gates.fp16_max_acc_drop_pt=0.1", "build.precisions=[int8]",
     "quantize.calib_methods=[entropy]", "quantize.exclude=[conv_1]", "accel.torchrun_args=[--nnodes=2]",
     "teacher.checkpoint=/models/t.pt", "teacher.checkpoint_arch={arch: conv, width: 8, depth: 2}",
     "data.avdigits.snr_db=[0, 5]", "distill.student.stem_stride=2"],
])
def test_dump_loads_back_to_the_same_config(tmp_path, sets):
    """What `fdkd run` writes (config.yaml, student.config.yaml, the torchrun config) reads back identically."""
    cfg = load_config(None, sets)
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg
    assert dump_config(again) == dump_config(cfg)
    if sets:
        assert again != load_config()  # the overrides survived the round trip


def test_cli_reports_config_errors_with_exit_2():
    result = CliRunner().invoke(app, ["config", "--set", "distill.optim.lr=-1"])
    assert result.exit_code == 2
    assert "distill.optim.lr" in result.output
    ok = CliRunner().invoke(app, ["config", "--set", "distill.method=kd"])
    assert ok.exit_code == 0 and "method: kd" in ok.output


def test_the_built_in_label_fraction_stays_with_the_built_in_data():
    """The built-in run keeps 5 % of avdigits' labels; switching the source to a manifest by override keeps every
    label of the manifest (its empty cells are its unlabelled pairs) unless data.labelled is set with it."""
    assert load_config(None, []).data.labelled == 0.05
    manifest = ["data.source=manifest", "data.manifest.path=pairs.csv"]
    assert load_config(None, manifest).data.labelled == 1.0
    assert load_config(None, [*manifest, "data.labelled=0.5", "data.label_noise=0.2"]).data.labelled == 0.5
    assert load_config(None, [*manifest, "data.label_noise=0.2"]).data.label_noise == 0.2
    assert load_config(None, ["data.source=avdigits"]).data.labelled == 0.05  # the same source: kept
    whole = load_config(None, ["data={source: manifest, manifest: {path: pairs.csv}, labelled: 0.5}"])
    assert whole.data.labelled == 0.5  # set inside a replaced data mapping: the user's, kept
