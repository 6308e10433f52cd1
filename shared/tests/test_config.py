from dataclasses import dataclass, field

import pytest

from reprokit.config import load_config, parse_override, save_config
from reprokit.errors import ConfigError


@dataclass
class Model:
    n_layer: int = 2
    norm: str = "rms"


@dataclass
class Experiment:
    lr: float = 1e-3
    seeds: list[int] = field(default_factory=lambda: [0])
    model: Model = field(default_factory=Model)


def test_defaults_file_then_overrides(tmp_path):
    path = tmp_path / "cpu.yaml"
    path.write_text("lr: 0.02\nmodel:\n  n_layer: 12\n")
    cfg = load_config(Experiment, path, ["model.norm=layer", "seeds=[0, 1, 2]"])
    assert cfg.lr == 0.02
    assert cfg.model == Model(n_layer=12, norm="layer")
    assert cfg.seeds == [0, 1, 2]
    assert load_config(Experiment).model.n_layer == 2


def test_round_trip(tmp_path):
    cfg = load_config(Experiment, None, ["lr=0.5"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(Experiment, tmp_path / "c.yaml") == cfg


def test_unknown_keys_and_bad_files_are_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  n_layers: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.model: unknown key\(s\) \['n_layers'\]"):
        load_config(Experiment, path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Experiment, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("lr")
    assert parse_override("a.b=3") == ("a.b", 3)


def test_packaged_scale_configs(tmp_path):
    from reprokit.config import scale_config_path

    path = scale_config_path("reprokit", "cpu")
    assert path.parts[-2:] == ("configs", "cpu.yaml")
    with pytest.raises(ConfigError, match="--scale must be one of smoke, cpu, paper"):
        scale_config_path("reprokit", "huge")


def test_parse_seeds():
    from reprokit.config import parse_seeds

    assert parse_seeds("0,1, 2") == [0, 1, 2]
    with pytest.raises(ConfigError, match="--seeds must be comma-separated integers"):
        parse_seeds("0,a")
    with pytest.raises(ConfigError, match="at least one seed"):
        parse_seeds(",")


@dataclass
class Sweep:
    lr: float = 1e-3
    contrast: float | None = None
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    seeds: list[int] = field(default_factory=lambda: [0])
    name: str = "x"


def test_numeric_strings_become_numbers_for_float_fields(tmp_path):
    # YAML 1.1 reads 1e-2 (no dot) as the string '1e-2'
    assert parse_override("lrs=[1e-2,1.0e-1]") == ("lrs", ["1e-2", 0.1])
    path = tmp_path / "s.yaml"
    path.write_text("lr: 3e-3\ncontrast: 2e-2\n")
    cfg = load_config(Sweep, path, ["lrs=[1e-2,1.0e-1,5]", "name=1e-2"])
    assert cfg.lr == 0.003 and isinstance(cfg.lr, float)
    assert cfg.contrast == 0.02
    assert cfg.lrs == [0.01, 0.1, 5]
    assert cfg.name == "1e-2"  # a str field keeps its text
    assert load_config(Sweep, None, ["contrast=null"]).contrast is None
    with pytest.raises(ConfigError, match=r"Sweep.lrs\[1\] must be a number, got 'fast'"):
        load_config(Sweep, None, ["lrs=[1e-2,fast]"])
    with pytest.raises(ConfigError, match="Sweep.lr must be a number"):
        load_config(Sweep, None, ["lr=abc"])
