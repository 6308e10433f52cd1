"""The experiment config (one YAML per scale in cope/configs/) and the method list it implies."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from cope.cascade import Limits, MethodConfig, ModelConfig, parse_method
from cope.tasks import DataConfig, PromptConfig
from reprokit.config import load_config, scale_config_path
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
    threads: int = 0  # torch CPU threads (0 = all cores)

    def roster(self) -> dict[str, ModelConfig]:
        roster = {}
        for entry in self.models:
            try:
                model = ModelConfig(**entry)
            except TypeError as err:
                raise ConfigError(f"models: malformed entry {entry}: {err}") from err
            if model.backend not in ("hf", "vllm", "openai"):
                raise ConfigError(f"models.{model.name}.backend must be hf, vllm or openai, "
                                  f"got {model.backend!r}")
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


def load(scale: str, overrides: list[str] = ()) -> CopeConfig:
    cfg = load_config(CopeConfig, config_path(scale), list(overrides))
    cfg.method_list()  # validate now: a bad config fails before any model loads
    if cfg.chunk_size < 1:
        raise ConfigError(f"chunk_size must be >= 1, got {cfg.chunk_size}")
    return cfg
