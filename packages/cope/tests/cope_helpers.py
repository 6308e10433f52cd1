"""Scripted small/large models and the COPE method shared by the tests."""

import copy
import json
import re

from cope.backends import ScriptedBackend
from cope.cascade import Engine, Limits, MethodConfig, ModelConfig, StageConfig
from cope.config import CopeConfig
from cope.tasks import DataConfig, Problem, PromptConfig

PRICE_IN, PRICE_OUT = 2.5, 10.0


def _problem_name(text: str) -> str:
    return re.search(r"(EASY|MEDIUM|HARD|JUNK)", text).group(1)


def small_responder(text: str, k: int) -> str:
    """Small model: sure on EASY; unsure on MEDIUM/HARD unless a large plan fixes MEDIUM."""
    name = _problem_name(text)
    if "Write a one-sentence plan" in text:
        return f"Plan: think small {k}"
    if name == "JUNK":
        return "no idea"
    if name == "EASY":
        return "so Answer: 1"
    if "Plan: LARGE plan" in text:
        return "Answer: 2" if name == "MEDIUM" else f"Answer: {10 + k}"
    plan = re.search(r"think small (\d)", text)
    return f"Answer: {5 + (int(plan.group(1)) if plan else k)}"


def large_responder(text: str, k: int) -> str:
    name = _problem_name(text)
    if "Write a short plan" in text:
        return "LARGE plan\nignored second line"
    return "no idea" if name == "JUNK" else "Answer: 3"


def make_problems():
    return [Problem("easy", "EASY question", "1"), Problem("medium", "MEDIUM question", "2"),
            Problem("hard", "HARD question", "3")]


def make_scripted():
    small = ScriptedBackend(small_responder, "small")
    large = ScriptedBackend(large_responder, "large")
    roster = {"small": ModelConfig("small"),
              "large": ModelConfig("large", price_in=PRICE_IN, price_out=PRICE_OUT)}
    engine = Engine(roster, {"small": small, "large": large})
    return engine, small, large


def cope_method(threshold: float = 0.75, name: str = "cope") -> MethodConfig:
    return MethodConfig(name, [
        StageConfig("small", "small", plans=4, executions_per_plan=1, plan_temperature=0.7,
                    threshold=threshold),
        StageConfig("small", "large", plans=1, executions_per_plan=4, threshold=threshold),
        StageConfig("large", "large", plans=1, executions_per_plan=1, temperature=0.0),
    ])


PROMPTS = PromptConfig()
LIMITS = Limits()


METHODS = [
    {"name": "small_only", "stages": [{"executor": "small", "executions_per_plan": 4}]},
    {"name": "large_only", "stages": [{"executor": "large", "executions_per_plan": 1,
                                       "temperature": 0.0}]},
    {"name": "cascade_no_plan", "stages": [
        {"executor": "small", "executions_per_plan": 4},
        {"executor": "large", "executions_per_plan": 1, "temperature": 0.0}]},
    {"name": "cope", "stages": [
        {"planner": "small", "plans": 4, "executions_per_plan": 1, "executor": "small"},
        {"planner": "large", "executor": "small", "executions_per_plan": 4},
        {"planner": "large", "executor": "large", "executions_per_plan": 1,
         "temperature": 0.0}]},
]


def make_config(tmp_path, **overrides) -> CopeConfig:
    """Six scripted problems (easy, medium, hard twice) in a task file, the four methods."""
    rows = [{"id": f"p{i}", "question": f"{kind} question {i}", "answer": gold}
            for i, (kind, gold) in enumerate([("EASY", "1"), ("MEDIUM", "2"), ("HARD", "3")] * 2)]
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return CopeConfig(scale="test", data=DataConfig(source="jsonl", path=str(path), size=6),
                      models=[{"name": "small", "backend": "hf", "model": "scripted"},
                              {"name": "large", "backend": "openai", "model": "scripted",
                               "price_in": 2.5, "price_out": 10.0}],
                      **{"methods": copy.deepcopy(METHODS), "chunk_size": 3,
                         "sweep_thresholds": [0.5], **overrides})
