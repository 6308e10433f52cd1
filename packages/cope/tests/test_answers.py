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
