"""The report's accuracy-by-part table of a task mix, on hand-written records."""

from cope.report import _accuracy_by_part


def _record(pid: str, **correct: bool) -> dict:
    return {"id": pid, "methods": {m: {"correct": c} for m, c in correct.items()}}


def test_counts_correct_answers_per_part_in_order_of_first_appearance():
    records = [_record("easy/a", small=True, large=True),
               _record("code/b", small=False, large=True),
               _record("easy/c", small=False, large=True),
               _record("code/d", small=False, large=False)]
    header, rows = _accuracy_by_part(records, ["small", "large"])
    assert header == ("method", "easy", "code")
    assert rows == [("small", "1 / 2", "0 / 2"), ("large", "2 / 2", "1 / 2")]


def test_no_table_without_a_mix_of_parts():
    assert _accuracy_by_part([_record("chain_sum-1", m=True)], ["m"]) is None
    assert _accuracy_by_part([_record("easy/a", m=True), _record("easy/b", m=False)],
                             ["m"]) is None
