import pytest

from vos.config import ConfigError, InferConfig, TrainConfig, config_from_dict, load_config, save_config, to_dict


def test_unknown_key_names_the_closest_valid_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("cycles:\n  detach_mask: true\n")
    with pytest.raises(ConfigError, match=r"cycles\.detach_mask.*detach_masks"):
        load_config(TrainConfig, p)
    with pytest.raises(ConfigError, match="Did you mean 'lr'"):
        load_config(TrainConfig, None, ["optim.lrr=1e-3"])


def test_composition_and_overrides(tmp_path):
    cfg = load_config(TrainConfig, "configs/train/smoke.yaml", ["optim.lr=0.003", "model.decoder.layers=1"])
    assert cfg.optim.lr == 0.003 and cfg.model.decoder.layers == 1
    swin = load_config(TrainConfig, None, ["model=hodor_swin_t"])
    assert swin.model.backbone == "swin_t" and swin.model.channels == 256 and swin.model.encoder.layers == 5
    with pytest.raises(ConfigError, match="Available"):
        load_config(TrainConfig, None, ["model=nonexistent"])


def test_an_override_can_change_one_item_of_a_list():
    base = "configs/train/short_term_composites_given_hideband.yaml"
    before = load_config(TrainConfig, base)
    cfg = load_config(TrainConfig, base, ["data.sources.0.pseudo_labels=outputs/teacher2", "data.sources.1.weight=0.5"])
    assert cfg.data.sources[0].pseudo_labels == "outputs/teacher2" and cfg.data.sources[1].weight == 0.5
    assert to_dict(cfg.data.sources)[2:] == to_dict(before.data.sources)[2:]  # the other items unchanged
    assert cfg.data.sources[0].length == before.data.sources[0].length
    for item, match in (("data.sources.9.weight=1", "has 7 items"), ("data.sources.0.wieght=1", "Did you mean 'weight'"),
                        ("optim.0.lr=1", "'optim' is not a list")):
        with pytest.raises(ConfigError, match=match):
            load_config(TrainConfig, base, [item])


def test_type_errors_and_round_trip(tmp_path):
    with pytest.raises(ConfigError):
        load_config(InferConfig, None, ["window=many"])
    cfg = load_config(InferConfig, None, ["window=5"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(InferConfig, tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert config_from_dict(InferConfig, to_dict(cfg)).window == 5


def test_choices_and_ranges_are_checked_at_load(tmp_path):
    """A misspelt choice or an out-of-range value stops at load with a message naming the valid ones, where it
    used to be accepted (an unknown schedule gave a constant learning rate; adapt.train=foo meant "heads")."""
    for schema, item, match in (
            (TrainConfig, "optim.schedule=cosin", r"'cosin', expected one of \[cosine, step, constant\]"),
            (InferConfig, "adapt.train=foo", r"expected one of \[all, late, heads\]"),
            (InferConfig, "amp=maybe", r"expected one of \[auto, true, false\]"),
            (InferConfig, "adapt.steps=-3", r"adapt.steps=-3 is out of range: it must be >= 0"),
            (InferConfig, "locality=-1", r"locality=-1.0 is out of range: it must be >= 0 and <= 1"),
            (InferConfig, "window=0", r"window=0 is out of range"),
            (TrainConfig, "optim.batch_size=0", r"optim.batch_size=0 is out of range"),
            (TrainConfig, "model.short_term.stride=12", r"short_term.stride=12 is not allowed: it must be one of 8, 16"),
            (TrainConfig, "data.sources=[{kind: synthetic, weight: -1}]", r"data.sources\[0\].weight=-1")):
        with pytest.raises(ConfigError, match=match):
            load_config(schema, None, [item])
    from vos.config import ExperimentConfig

    with pytest.raises(ConfigError, match=r"expected one of \[mask, box\]"):
        load_config(ExperimentConfig, None, ["prompt=boxes"])
    with pytest.raises(ConfigError, match="out of range"):
        config_from_dict(InferConfig, {"short_side": -5})
    # YAML booleans for amp, choices saved as plain strings (checkpoints are loaded with weights_only)
    assert load_config(InferConfig, None, ["amp=false"]).amp == "false"
    saved = to_dict(load_config(TrainConfig, None, ["optim.schedule=step"]))
    assert saved["optim"]["schedule"] == "step" and type(saved["optim"]["schedule"]) is str
    p = tmp_path / "i.yaml"
    p.write_text("amp: true\nlocality: 0.1\n")
    assert load_config(InferConfig, p).amp == "true"


def test_the_written_out_inference_defaults_are_the_defaults():
    """configs/infer/default.yaml documents the defaults: loading it must change nothing."""
    from pathlib import Path

    written = load_config(InferConfig, Path(__file__).resolve().parents[1] / "configs" / "infer" / "default.yaml")
    assert to_dict(written) == to_dict(load_config(InferConfig, None))
    assert load_config(InferConfig, None).adapt.steps > 0  # test-time adaptation is on by default
