"""Scripted small/large models and the COPE method shared by the tests."""

import re

from cope.backends import ScriptedBackend
from cope.cascade import Engine, Limits, MethodConfig, ModelConfig, StageConfig
from cope.tasks import Problem, PromptConfig

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
