"""Problems, prompts, and the per-task-type rules: extraction, voting/confidence, checking.

Offline problems come from `reasoning-gym` (procedurally generated, fixed seed and size)
or a JSONL file of {"id", "question", "answer"}; GSM8K, MATH-500 and MBPP come from the
hub through `datasets` (online only).

Confidence per task type (as in the paper): for math, the majority answer's vote share;
for code, the pass rate of the best sampled program on the tests shown in the prompt.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cope.answers import Vote, check_math, extract_math_answer, majority_vote
from cope.backends import Message
from cope.sandbox import extract_code, run_tests
from reprokit.errors import ConfigError, DatasetError, require_online


@dataclass
class Problem:
    id: str
    question: str
    answer: str
    task_type: str = "math"  # math | code
    tests: list[str] = field(default_factory=list)  # code: assert statements


@dataclass
class DataConfig:
    source: str = "reasoning_gym"  # reasoning_gym | jsonl | gsm8k | math500 | mbpp
    name: str = "chain_sum"  # reasoning-gym dataset name
    options: dict = field(default_factory=dict)  # reasoning-gym dataset options
    size: int = 40
    seed: int = 1
    path: str = ""  # jsonl source


def load_problems(cfg: DataConfig) -> list[Problem]:
    if cfg.size <= 0:
        raise ConfigError(f"data.size must be positive, got {cfg.size}")
    if cfg.source == "reasoning_gym":
        import reasoning_gym

        try:
            ds = reasoning_gym.create_dataset(cfg.name, size=cfg.size, seed=cfg.seed,
                                              **cfg.options)
        except Exception as err:  # unknown name or option
            raise ConfigError(f"data: reasoning-gym dataset {cfg.name!r} with options "
                              f"{cfg.options}: {err}") from err
        return [Problem(id=f"{cfg.name}-{cfg.seed}-{i}", question=x["question"],
                        answer=str(x["answer"])) for i, x in enumerate(ds)]
    if cfg.source == "jsonl":
        return _load_jsonl(Path(cfg.path), cfg.size)
    if cfg.source in ("gsm8k", "math500", "mbpp"):
        return _load_hub(cfg)
    raise ConfigError(f"data.source must be reasoning_gym, jsonl, gsm8k, math500 or mbpp, "
                      f"got {cfg.source!r}")


def _load_jsonl(path: Path, size: int) -> list[Problem]:
    if not path.is_file():
        raise DatasetError(f"data.path: {path} does not exist")
    problems = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            problems.append(Problem(id=str(row.get("id", line_no)), question=row["question"],
                                    answer=str(row.get("answer", "")),
                                    task_type=row.get("task_type", "math"),
                                    tests=list(row.get("tests", []))))
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DatasetError(f"{path}:{line_no}: malformed problem ({err})") from err
    return problems[:size]


def _load_hub(cfg: DataConfig) -> list[Problem]:
    require_online(f"data.source={cfg.source}", "data.source=reasoning_gym (offline default)")
    from datasets import load_dataset

    if cfg.source == "gsm8k":
        ds = load_dataset("openai/gsm8k", "main", split="test")
        return [Problem(f"gsm8k-{i}", x["question"], x["answer"].split("####")[-1].strip())
                for i, x in enumerate(ds.select(range(min(cfg.size, len(ds)))))]
    if cfg.source == "math500":
        ds = load_dataset("HuggingFaceH4/MATH-500", split="test")
        return [Problem(x["unique_id"], x["problem"], x["answer"])
                for x in ds.select(range(min(cfg.size, len(ds))))]
    ds = load_dataset("google-research-datasets/mbpp", "sanitized", split="test")
    problems = []
    for x in ds.select(range(min(cfg.size, len(ds)))):
        imports = "\n".join(x["test_imports"])
        tests = [f"{imports}\n{t}".strip() for t in x["test_list"]]
        question = f"{x['prompt']}\nYour code should pass this test:\n{x['test_list'][0]}"
        problems.append(Problem(f"mbpp-{x['task_id']}", question, "", "code", tests))
    return problems


# ---------------------------------------------------------------- prompts


@dataclass
class PromptConfig:
    """Templates ({question}, {plan}) and worked examples shown as earlier chat turns.

    Small and large planners get their own templates (the paper tunes them separately).
    Each example: {"question", "plan", "solution"}; `solution` ends with the answer line.
    """

    direct: str = "{question}\nEnd with 'Answer: <number>'."
    plan_small: str = ("Write a one-sentence plan for solving this problem. "
                       "Do not solve it.\nProblem: {question}")
    plan_large: str = ("Write a short plan (one or two sentences) for solving this problem. "
                       "Do not solve it.\nProblem: {question}")
    execute: str = ("Problem: {question}\nPlan: {plan}\nFollow the plan. "
                    "End with 'Answer: <number>'.")
    examples: list[dict] = field(default_factory=list)
    # A short system message (replacing a chat template's default one: prompt tokens are
    # most of the compute for short answers on CPU); "" keeps the template's default.
    system: str = ""


def _system(cfg: PromptConfig) -> list[Message]:
    return [{"role": "system", "content": cfg.system}] if cfg.system else []


def _turns(examples: Sequence[dict], user: str, reply: str, **extra: str) -> list[Message]:
    messages: list[Message] = []
    for ex in examples:
        fields = {**ex, **{k: ex.get(k, "") for k in extra}}
        messages.append({"role": "user", "content": user.format(**fields)})
        messages.append({"role": "assistant", "content": str(ex[reply])})
    return messages


def direct_prompt(cfg: PromptConfig, question: str) -> list[Message]:
    return (_system(cfg) + _turns(cfg.examples, cfg.direct, "solution")
            + [{"role": "user", "content": cfg.direct.format(question=question)}])


def plan_prompt(cfg: PromptConfig, question: str, large: bool) -> list[Message]:
    template = cfg.plan_large if large else cfg.plan_small
    return (_system(cfg) + _turns(cfg.examples, template, "plan")
            + [{"role": "user", "content": template.format(question=question)}])


def execute_prompt(cfg: PromptConfig, question: str, plan: str) -> list[Message]:
    return (_system(cfg) + _turns(cfg.examples, cfg.execute, "solution")
            + [{"role": "user", "content": cfg.execute.format(question=question,
                                                               plan=plan.strip())}])


def clean_plan(text: str) -> str:
    """A plan is prose: drop a leading "Plan:" and anything after an answer line."""
    plan = text.strip()
    if plan.lower().startswith("plan:"):
        plan = plan[5:].strip()
    return plan.split("Answer:")[0].strip()


# ---------------------------------------------------------------- task rules


class MathRules:
    """Answers are normalised numbers/expressions; confidence = majority vote share."""

    def extract(self, text: str) -> str | None:
        return extract_math_answer(text)

    def vote(self, answers: Sequence[str | None], problem: Problem) -> Vote:
        return majority_vote(answers)

    def check(self, answer: str | None, problem: Problem) -> bool:
        return check_math(answer, problem.answer)


class CodeRules:
    """Answers are programs; confidence = the best program's pass rate on the visible tests.

    Visible tests are the first ``visible_tests`` of the problem (shown in the prompt, as
    MBPP does); correctness is all tests passing. Programs run in the sandbox (subprocess,
    timeout, no network).
    """

    def __init__(self, visible_tests: int = 1, timeout_s: float = 5.0):
        self.visible_tests = visible_tests
        self.timeout_s = timeout_s

    def extract(self, text: str) -> str | None:
        return extract_code(text)

    def vote(self, answers: Sequence[str | None], problem: Problem) -> Vote:
        visible = problem.tests[:self.visible_tests]
        scores: dict[str, float] = {}
        for code in answers:
            if code is not None and code not in scores:
                scores[code] = run_tests(code, visible, self.timeout_s).pass_rate
        if not scores:
            return Vote(None, 0.0, {}, len(answers), len(answers))
        best = max(scores, key=lambda c: scores[c])  # first best on ties
        counts = {c: sum(a == c for a in answers) for c in scores}
        return Vote(best, scores[best], counts, len(answers),
                    sum(a is None for a in answers))

    def check(self, answer: str | None, problem: Problem) -> bool:
        return answer is not None and run_tests(answer, problem.tests,
                                                self.timeout_s).pass_rate == 1.0


def rules_for(task_type: str) -> Any:
    if task_type == "math":
        return MathRules()
    if task_type == "code":
        return CodeRules()
    raise ConfigError(f"task type must be math or code, got {task_type!r}")
