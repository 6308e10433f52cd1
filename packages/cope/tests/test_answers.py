import pytest

from cope.answers import check_math, extract_math_answer, majority_vote, normalize


@pytest.mark.parametrize("text, expected", [
    ("3 + 4 = 7. Answer: 7", "7"),
    ("6 - 9 = -3, -3 + 2 = -1. Answer: -1", "-1"),
    ("The answer is 12.0", "12"),
    ("so we get \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("first 3, then 5, finally 8", "8"),
    ("Answer: 1,234", "1234"),
    ("Answer: 3/4", "0.75"),
    ("Answer: 7 apples", "7"),
    ("so Answer: $\\frac{14}{3}$.", "\\frac{14}{3}"),
    ("I cannot say.", None),
    ("", None),
])
def test_extract_math_answer(text, expected):
    assert extract_math_answer(text) == expected


def test_normalize_merges_equal_numbers():
    assert normalize("7.0") == normalize("+7") == normalize("7") == "7"
    assert normalize(" 0.50 ") == "0.5"
    assert normalize(None) is None and normalize("  ") is None


def test_check_math_numbers_and_expressions():
    assert check_math("-3", "-3")
    assert check_math("0.3125", "5/16")
    assert not check_math("4", "3")
    assert not check_math(None, "3")
    assert check_math("\\frac{1}{2}", "0.5")


def test_majority_vote_counts_malformed_in_the_share():
    vote = majority_vote(["7", None, "7", "5"])
    assert vote.top == "7" and vote.share == 0.5 and vote.n_malformed == 1
    assert vote.counts == {"7": 2, "5": 1}
    tie = majority_vote(["5", "7"])
    assert tie.top == "5"  # first seen wins a tie
    empty = majority_vote([None, None])
    assert empty.top is None and empty.share == 0.0


@pytest.mark.parametrize("text, expected", [
    ("Answer: 1e400", "1e400"),  # not 1: too large for a float, kept as text
    ("Answer: 2.5e3", "2500"),
    ("Answer: 1E-3", "0.001"),
    ("so the result is 3e2", "300"),
])
def test_exponents_are_part_of_the_number(text, expected):
    assert extract_math_answer(text) == expected


def test_an_overflowing_answer_is_not_read_as_its_mantissa():
    assert not check_math(extract_math_answer("Answer: 1e400"), "1")
    assert check_math(extract_math_answer("Answer: 2.5e3"), "2500")


def test_report_counts_unparsable_apart_from_wrong():
    from cope.report import method_table

    def row(answer, correct):
        return {"answer": answer, "correct": correct, "settled_stage": 1, "stages_run": 1,
                "reason": "confident", "cost_usd": 0.0, "tokens": {}, "errors": [],
                "stages": [{"answers": [answer], "malformed": int(answer is None)}]}

    records = [{"methods": {"m": row(a, c)}}
               for a, c in [("1", True), ("7", False), (None, False), (None, False)]]
    t = method_table(records)["m"]
    assert (t["wrong"], t["unparsable"], t["accuracy"]) == (1, 2, 0.25)
    assert t["malformed_share"] == 0.5
