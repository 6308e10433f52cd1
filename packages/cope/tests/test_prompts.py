"""Prompts per task type: a code problem is asked for a Python function, a math one for an
answer line; each type's templates come from its own config section."""

from cope_helpers import LIMITS, cope_method

from cope.backends import ScriptedBackend
from cope.cascade import Engine, MethodConfig, ModelConfig, StageConfig, run_method
from cope.config import load
from cope.tasks import CodePrompts, Problem, PromptConfig

ADD_TESTS = ["assert add(1, 2) == 3"]


def recording_engine():
    """Scripted models that answer every prompt wrongly, so every stage runs."""
    small, large = ScriptedBackend(lambda t, k: "nothing", "small"), \
        ScriptedBackend(lambda t, k: "nothing", "large")
    roster = {"small": ModelConfig("small"), "large": ModelConfig("large", price_in=1.0)}
    return Engine(roster, {"small": small, "large": large}), small, large


def prompts_of(backend):
    return [p for prompts, _ in backend.calls for p in prompts]


def test_code_problems_get_code_prompts_and_math_problems_math_ones():
    engine, small, large = recording_engine()
    problems = [Problem("c", "Write add(a, b).", "", "code", ADD_TESTS),
                Problem("m", "What is 2 + 2?", "4")]
    run_method(cope_method(), problems, engine, PromptConfig(), LIMITS)
    sent = prompts_of(small) + prompts_of(large)
    code = [p for p in sent if "add(a, b)" in p]
    math = [p for p in sent if "2 + 2" in p]
    # every stage ran for both: 1 small plan prompt, 4 executions of its plans, 1 large
    # plan prompt, 1 small execution of it, 1 large execution
    assert len(code) == len(math) == 8
    for p in code:
        assert "Answer: <number>" not in p and "Python function" in p
    for p in math:
        assert "Answer: <number>" in p or "Do not solve it" in p
        assert "Python" not in p
    executions = [p for p in code if "Plan:" in p]
    assert executions and all("```python" in p for p in executions)
    assert sum("Do not write code" in p for p in code) == 2  # the two planners


def test_direct_code_prompt_asks_for_a_code_block():
    engine, small, _ = recording_engine()
    alone = MethodConfig("small_only", [StageConfig(executor="small")])
    run_method(alone, [Problem("c", "Write add(a, b).", "", "code", ADD_TESTS)], engine,
               PromptConfig(), LIMITS)
    (prompt,) = prompts_of(small)
    assert prompt == CodePrompts().direct.format(question="Write add(a, b).")
    assert "```python code block" in prompt


def test_code_templates_are_configurable_apart_from_math():
    cfg = load("smoke", ["prompts.code.direct=CODE {question}",
                         "prompts.code.system=You write Python."])
    assert cfg.prompts.code.direct == "CODE {question}"
    assert cfg.prompts.code.system == "You write Python."
    assert cfg.prompts.system == "You are a careful calculator."  # math keeps its own
    assert cfg.prompts.for_task("math") is cfg.prompts
    engine, small, _ = recording_engine()
    alone = MethodConfig("small_only", [StageConfig(executor="small")])
    run_method(alone, [Problem("c", "Write add(a, b).", "", "code", ADD_TESTS)], engine,
               cfg.prompts, LIMITS)
    assert prompts_of(small) == ["You write Python.\nCODE Write add(a, b)."]
