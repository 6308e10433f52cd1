"""Experiment configs: a dataclass per package, one YAML file per scale, ``key=value`` overrides.

    cfg = load_config(PerlnConfig, "configs/cpu.yaml", ["model.n_layer=6", "seeds=[0,1]"])

Unknown keys are errors (a typo must not silently fall back to a default). YAML 1.1 reads
``1e-2`` (no dot) as a string: fields typed ``float`` (also ``float | None`` and
``list[float]``) take such numeric strings as numbers, so ``--set 'lrs=[1e-2,1e-1]'`` works.
"""

from __future__ import annotations

import dataclasses
import typing
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from reprokit.errors import ConfigError

T = TypeVar("T")


def read_yaml(path: Path, what: str = "config file") -> dict:
    """A YAML mapping from `path`; errors name `what` and the file."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} {path} is not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path}: expected a mapping at the top, got "
                          f"{type(data).__name__}")
    return data


def _is_float_hint(hint) -> bool:
    if hint is float:
        return True
    args = typing.get_args(hint)  # float | None, Optional[float]
    return bool(args) and float in args and all(a in (float, int, type(None)) for a in args) \
        and typing.get_origin(hint) not in (list, tuple)


def _coerce(hint, value: Any, where: str) -> Any:
    """Numeric strings for float fields (``"1e-2"`` -> 0.01); anything else is left alone."""
    if _is_float_hint(hint) and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r}") from None
    if typing.get_origin(hint) is list and isinstance(value, list):
        (item,) = typing.get_args(hint) or (Any,)
        if _is_float_hint(item):
            return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _build(cls: type[T], data: dict[str, Any], where: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[name] = _build(hint, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(hint, value, f"{where}.{name}")
    return cls(**kwargs)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.n_layer=6"`` -> ``("model.n_layer", 6)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. model.n_layer=6)")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Build `cls` from the defaults, then the YAML file at `path`, then the overrides."""
    data: dict[str, Any] = {}
    where = cls.__name__
    if path is not None:
        path = Path(path)
        data = read_yaml(path)
        where = str(path)
    for text in overrides:
        key, value = parse_override(text)
        _set_path(data, key, value)
    try:
        return _build(cls, data, where)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err


SCALES = ("smoke", "cpu", "paper")


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> ``[0, 1, 2]``, with an error that names the option."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError as err:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from err
    if not seeds:
        raise ConfigError(f"--seeds must name at least one seed, got {text!r}")
    return seeds


def scale_config_path(package: str, scale: str) -> Path:
    """The config a package ships for `scale`: ``<package>/configs/<scale>.yaml``."""
    if scale not in SCALES:
        raise ConfigError(f"--scale must be one of {', '.join(SCALES)}, got {scale!r}")
    return Path(str(resources.files(package) / "configs" / f"{scale}.yaml"))


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
