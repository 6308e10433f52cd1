"""The experiment config (one YAML per scale in cope/configs/) and the method list it implies.

Layers, later ones win: the scale's YAML, then ``--config FILE`` (a YAML mapping merged
key by key into it; a list, such as ``models``, is replaced as a whole), then each
``--set key=value``. A ``--set`` key may step into lists by index or, for lists of named
entries, by name: ``models.1.base_url=http://host:8001/v1`` and
``models.large.base_url=...`` both change the second roster entry, keeping the others.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cope.cascade import Limits, MethodConfig, ModelConfig, parse_method
from cope.tasks import DataConfig, PromptConfig
from reprokit.config import _build, parse_override, read_yaml, scale_config_path
from reprokit.errors import ConfigError


@dataclass
class CopeConfig:
    scale: str = "cpu"
    seeds: list[int] = field(default_factory=lambda: [0])  # offsets to data.seed and sampling
    data: DataConfig = field(default_factory=DataConfig)
    models: list[dict] = field(default_factory=list)  # the roster: ModelConfig fields
    methods: list[dict] = field(default_factory=list)  # MethodConfig fields, stages inside
    # Extra COPE variants from the same parts ("cope@t=0.5", "cope@n=2"): the vote
    # threshold of stages 1-2, or the number of votes per stage.
    sweep_method: str = "cope"
    sweep_thresholds: list[float] = field(default_factory=list)
    sweep_samples: list[int] = field(default_factory=list)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    limits: Limits = field(default_factory=Limits)
    chunk_size: int = 8  # problems sent through each stage together
    budget_usd: float = 0.0  # cap on each method's paid-model spend (0 = none)
    # A method whose calls failed on more than this share of its problems is not a
    # measurement: its rows are marked and every claim that uses it is inconclusive.
    max_error_share: float = 0.05
    threads: int = 0  # torch CPU threads (0 = all cores)

    def roster(self) -> dict[str, ModelConfig]:
        roster = {}
        for entry in self.models:
            try:
                model = ModelConfig(**entry)
            except TypeError as err:
                raise ConfigError(f"models: malformed entry {entry}: {err}") from err
            if model.backend not in ("hf", "vllm", "openai", "llamacpp"):
                raise ConfigError(f"models.{model.name}.backend must be hf, vllm, openai or "
                                  f"llamacpp, got {model.backend!r}")
            roster[model.name] = model
        return roster

    def method_list(self) -> list[MethodConfig]:
        methods = [parse_method(m) for m in self.methods]
        names = [m.name for m in methods]
        if len(set(names)) != len(names):
            raise ConfigError(f"methods: duplicate names in {names}")
        roster = self.roster()
        for m in methods:
            for s in m.stages:
                for who in (s.executor, s.planner):
                    if who and who not in roster:
                        raise ConfigError(f"methods.{m.name}: model {who!r} is not in models "
                                          f"({sorted(roster)})")
        base = next((m for m in methods if m.name == self.sweep_method), None)
        if (self.sweep_thresholds or self.sweep_samples) and base is None:
            raise ConfigError(f"sweep_method {self.sweep_method!r} is not one of {names}")
        for t in self.sweep_thresholds:
            variant = copy.deepcopy(base)
            variant.name = f"{base.name}@t={t:g}"
            for s in variant.stages[:-1]:
                s.threshold = t
            methods.append(variant)
        for n in self.sweep_samples:
            variant = copy.deepcopy(base)
            variant.name = f"{base.name}@n={n}"
            for s in variant.stages[:-1]:  # the last (large) stage keeps its samples
                if s.plans > 1:
                    s.plans = n
                else:
                    s.executions_per_plan = n
            methods.append(variant)
        return methods


def config_path(scale: str) -> Path:
    return scale_config_path("cope", scale)




def merge(base: dict, over: dict) -> dict:
    """`over` merged into `base`: mappings key by key, everything else replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_path(data: dict, dotted: str, value: Any) -> None:
    """``a.b.1.c`` into nested mappings and lists (an index, or a list entry's ``name``)."""
    keys = dotted.split(".")
    node: Any = data
    for depth, key in enumerate(keys):
        last = depth == len(keys) - 1
        where = ".".join(keys[:depth + 1])
        if isinstance(node, list):
            index = _list_index(node, key, dotted, where)
            if last:
                node[index] = value
                return
            node = node[index]
        elif isinstance(node, dict):
            if last:
                node[key] = value
                return
            node = node.setdefault(key, {})
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(keys[:depth])!r} is a "
                              f"{type(node).__name__}, not a section or a list")


def _list_index(node: list, key: str, dotted: str, where: str) -> int:
    if key.lstrip("-").isdigit():
        index = int(key)
        if not -len(node) <= index < len(node):
            raise ConfigError(f"override {dotted!r}: {where} is out of range (the list has "
                              f"{len(node)} entries)")
        return index
    names = [e.get("name") for e in node if isinstance(e, dict)]
    if key in names:
        return names.index(key)
    raise ConfigError(f"override {dotted!r}: {where}: no entry {key!r} (use an index "
                      f"0..{len(node) - 1} or a name among {names})")


def load(scale: str, overrides: list[str] = (), config_file: str | Path | None = None
         ) -> CopeConfig:
    path = config_path(scale)
    data = read_yaml(path, "config file")
    where = str(path)
    if config_file:
        data = merge(data, read_yaml(Path(config_file), "--config"))
        where = f"{path} + {config_file}"
    for text in overrides:
        key, value = parse_override(text)
        set_path(data, key, value)
    try:
        cfg = _build(CopeConfig, data, where)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err
    cfg.method_list()  # validate now: a bad config fails before any model loads
    if cfg.chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {cfg.chunk_size}")
    if not 0 <= cfg.max_error_share < 1:
        raise ConfigError(f"max_error_share must be in [0, 1), got {cfg.max_error_share}")
    return cfg
