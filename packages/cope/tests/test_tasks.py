"""Task files: the JSONL format, validated line by line before any model loads."""

import json

import pytest

from cope.tasks import DataConfig, describe_data, file_sha256, load_problems, load_task_file
from reprokit.errors import DatasetError

GOOD = [{"id": "p1", "question": "What is 2+2?", "answer": "4"},
        {"id": "c1", "task_type": "code", "question": "Write add(a, b).",
         "tests": ["assert add(1, 2) == 3", "assert add(0, 0) == 0"]},
        {"question": "What is 3*3?", "answer": 9}]


def write(path, lines):
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n"
                            for ln in lines))
    return path


def test_a_good_file_loads_every_field(tmp_path):
    problems = load_task_file(write(tmp_path / "t.jsonl", GOOD))
    assert [p.id for p in problems] == ["p1", "c1", "3"]  # id defaults to the line number
    assert problems[1].task_type == "code" and problems[1].tests == GOOD[1]["tests"]
    assert problems[2].answer == "9" and problems[0].task_type == "math"


@pytest.mark.parametrize("bad, message", [
    ("[1, 2]", "expected a JSON object, got an array"),
    ("null", "expected a JSON object, got null"),
    ("{not json", "not valid JSON"),
    ({"id": "p1", "question": "again", "answer": "6"}, "duplicate id 'p1' (first on line 1)"),
    ({"id": "c2", "task_type": "code", "question": "q", "tests": "assert f()"},
     "tests must be a list of non-empty strings (assert statements), got a string"),
    ({"id": "m2", "question": "What is 1+1?"}, "a math task needs an answer"),
    ({"id": "x", "task_type": "essay", "question": "q", "answer": "1"},
     "task_type must be one of math, code, got 'essay'"),
    ({"id": "c3", "task_type": "code", "question": "q"}, "a code task needs tests"),
    ({"id": "y", "question": "", "answer": "1"}, "question must be a non-empty string"),
    ({"id": "z", "question": "q", "answer": "1", "gold": "1"}, "unknown field(s) ['gold']"),
])
def test_every_bad_line_is_named_by_file_and_line(tmp_path, bad, message):
    path = write(tmp_path / "t.jsonl", [GOOD[0], "", bad])
    with pytest.raises(DatasetError) as info:
        load_task_file(path)
    assert f"{path}:3: " in str(info.value) and message in str(info.value)


def test_all_bad_lines_are_reported_at_once(tmp_path):
    path = write(tmp_path / "t.jsonl", ["[1]", GOOD[0], "null", GOOD[0]])
    text = str(pytest.raises(DatasetError, load_task_file, path).value)
    assert "3 bad line(s)" in text
    assert all(f"{path}:{n}: " in text for n in (1, 3, 4))


def test_an_empty_or_missing_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match=f"task file {empty}: no problems"):
        load_task_file(empty)
    with pytest.raises(DatasetError, match="does not exist"):
        load_task_file(tmp_path / "nope.jsonl")


def test_a_task_file_is_not_cut_to_data_size(tmp_path):
    rows = [{"id": i, "question": f"q{i}", "answer": str(i)} for i in range(7)]
    path = write(tmp_path / "t.jsonl", rows)
    assert len(load_problems(DataConfig(source="jsonl", path=str(path), size=2))) == 7
    few = load_problems(DataConfig(source="jsonl", path=str(path), size=2, limit=3))
    assert [p.id for p in few] == ["0", "1", "2"]


def test_describe_data_names_the_file_its_hash_and_types(tmp_path):
    path = write(tmp_path / "t.jsonl", GOOD)
    cfg = DataConfig(source="jsonl", path=str(path))
    info = describe_data(cfg, load_problems(cfg))
    import hashlib

    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert info["path"] == str(path.resolve())
    assert info["task_types"] == {"code": 1, "math": 2} and info["problems"] == 3


@pytest.mark.parametrize("command", ["reproduce", None])
def test_help_documents_the_task_file_format(command, capsys):
    from cope.cli import main

    with pytest.raises(SystemExit) as info:
        main([command, "--help"] if command else ["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for needle in ('"task_type": "code"', "tests (code only", "answer (required for math",
                   "--tasks FILE", "data.limit", "FILE:LINE", "sha256"):
        assert needle in text, needle


def test_the_documented_examples_are_valid_task_files(tmp_path):
    """The README's and --help's example lines, copied into a file as a user would."""
    import re
    from pathlib import Path

    from cope.cli import TASK_FILE_HELP

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Your own problems: task files")[1]
    block = re.search(r"```json\n(.*?)```", section, re.DOTALL).group(1)
    problems = load_task_file(write(tmp_path / "readme.jsonl", block.splitlines()))
    assert [p.task_type for p in problems] == ["math", "math", "code"]
    shown = [ln.strip() for ln in TASK_FILE_HELP.splitlines() if ln.strip().startswith("{")]
    problems = load_task_file(write(tmp_path / "help.jsonl", shown))
    assert [p.id for p in problems] == ["p1", "c1"] and problems[1].tests
