import time

from cope.sandbox import extract_code, run_tests
from cope.tasks import CodeRules, Problem

GOOD = "def add(a, b):\n    return a + b"


def test_extract_code_from_fence_and_plain():
    assert extract_code("Here:\n```python\nx = 1\n```\n") == "x = 1"
    assert extract_code("def f():\n    return 1").startswith("def f")
    assert extract_code("no code here") is None


def test_tests_pass_and_fail_counted():
    run = run_tests(GOOD, ["assert add(1, 2) == 3", "assert add(2, 2) == 5"], timeout_s=10)
    assert (run.passed, run.total) == (1, 2) and run.pass_rate == 0.5


def test_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    run = run_tests("while True:\n    pass", ["assert True"], timeout_s=1.0)
    assert run.timed_out and run.passed == 0
    assert time.monotonic() - start < 8


def test_network_is_unreachable():
    code = ("import socket\n"
            "def fetch():\n"
            "    s = socket.create_connection(('127.0.0.1', 9), timeout=1)\n"
            "    return 'connected'\n")
    run = run_tests(code, ["assert fetch() == 'connected'"], timeout_s=10)
    assert run.passed == 0


def test_code_rules_confidence_is_pass_rate_on_visible_tests():
    problem = Problem("c1", "add two numbers", "", "code",
                      tests=["assert add(1, 2) == 3", "assert add(5, 5) == 10"])
    rules = CodeRules(visible_tests=1, timeout_s=10)
    bad = "def add(a, b):\n    return a - b"
    vote = rules.vote([bad, GOOD, None], problem)
    assert vote.top == GOOD and vote.share == 1.0 and vote.n_malformed == 1
    assert rules.check(GOOD, problem) and not rules.check(bad, problem)
