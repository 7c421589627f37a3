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


def test_type_errors_and_round_trip(tmp_path):
    with pytest.raises(ConfigError):
        load_config(InferConfig, None, ["window=many"])
    cfg = load_config(InferConfig, None, ["window=3"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(InferConfig, tmp_path / "c.yaml")
    assert to_dict(again) == to_dict(cfg)
    assert config_from_dict(InferConfig, to_dict(cfg)).window == 3
