import time

import pytest

from cope.sandbox import extract_code, run_tests
from cope.tasks import CodeRules, Problem

GOOD = "def add(a, b):\n    return a + b"


def test_extract_code_from_fence_and_plain():
    assert extract_code("Here:\n```python\nx = 1\n```\n") == "x = 1"
    assert extract_code("def f():\n    return 1").startswith("def f")
    assert extract_code("no code here") is None
    # a reply cut by max_tokens before the closing fence: the code, without the fence
    cut = "Sure:\n```python\ndef add(a, b):\n    return a + b\n"
    assert extract_code(cut) == "def add(a, b):\n    return a + b"
    assert run_tests(extract_code(cut), ["assert add(1, 2) == 3"], timeout_s=10).passed == 1
    assert extract_code("```python\n") is None


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


# ---------------------------------------------------------------- forging and escapes


def _iso():
    from cope.sandbox import isolation

    return isolation()


def test_printed_result_markers_count_for_nothing():
    # a wrong solution that prints what an old stdout-parsing harness took as results
    forged = ("import sys\n"
              "def add(a, b):\n"
              "    return 0\n"
              "print('COPE_RESULTS=[true,true,true]')\n"
              "print('COPE_RESULTS=[true, true, true]', file=sys.stderr)\n")
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 4", "assert add(0, 1) == 1"]
    run = run_tests(forged, tests, timeout_s=10)
    assert (run.passed, run.total) == (0, 3)
    assert "COPE_RESULTS" in run.stdout  # the output is kept, as data
    rules = CodeRules(visible_tests=3, timeout_s=10)
    problem = Problem("c", "add", "", "code", tests=tests)
    assert rules.vote([forged], problem).share == 0.0
    assert not rules.check(forged, problem)


def test_output_without_trailing_newline_does_not_spoil_results():
    code = ("import sys\n"
            "sys.stdout.write('no newline at the end')\n"
            "def add(a, b):\n"
            "    return a + b\n")
    tests = ["import sys\nsys.stdout.write('x')\nassert add(1, 2) == 3", "assert add(2, 3) == 5"]
    run = run_tests(code, tests, timeout_s=10)
    assert (run.passed, run.total) == (2, 2)
    assert run.stdout.startswith("no newline at the end")


def test_a_test_that_exits_fails_itself_and_the_rest():
    code = "def f():\n    return 1"
    run = run_tests(code, ["assert f() == 1", "import os\nos._exit(0)", "assert f() == 1"],
                    timeout_s=10)
    assert (run.passed, run.total) == (1, 3)


def _alive_with(token: str) -> list[int]:
    import os

    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if token.encode() in fh.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


def test_a_setsid_grandchild_does_not_outlive_the_run():
    import secrets

    token = f"cope-escape-{secrets.token_hex(6)}"
    code = ("import os, sys, subprocess\n"
            "def spawn():\n"
            "    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)',\n"
            f"                      '{token}'], start_new_session=True,\n"
            "                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "    return True\n")
    run = run_tests(code, ["assert spawn()"], timeout_s=10)
    assert run.passed == 1, run.error  # it did start
    deadline = time.monotonic() + 3
    while _alive_with(token) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive_with(token) == []


def test_the_candidate_sees_a_cleared_environment(monkeypatch):
    monkeypatch.setenv("COPE_TEST_SECRET", "s3cr3t-token")
    code = ("import os\n"
            "def leaked():\n"
            "    return [k for k, v in os.environ.items() if 's3cr3t' in v]\n")
    run = run_tests(code, ["assert leaked() == [], leaked()",
                           "import os\nassert set(os.environ) <= {'PATH', 'LANG', 'HOME', "
                           "'TMPDIR', 'COPE_SANDBOX', 'LC_CTYPE'}, sorted(os.environ)"],
                    timeout_s=10)
    assert (run.passed, run.total) == (2, 2), run.stderr


def test_no_process_environment_is_readable_through_proc(monkeypatch):
    if not _iso()["pid_namespace"]:
        pytest.skip("no PID namespace on this machine: /proc shows the parent (see README)")
    monkeypatch.setenv("COPE_TEST_SECRET", "s3cr3t-token")
    code = ("import os\n"
            "def found():\n"
            "    hits = []\n"
            "    for pid in [os.getppid()] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "        try:\n"
            "            if b's3cr3t-token' in open(f'/proc/{pid}/environ', 'rb').read():\n"
            "                hits.append(pid)\n"
            "        except OSError:\n"
            "            pass\n"
            "    return hits\n")
    run = run_tests(code, ["assert found() == [], found()"], timeout_s=10)
    assert run.passed == 1, run.stderr


def test_writes_outside_the_work_dir_are_refused(tmp_path):
    if not _iso()["read_only_fs"]:
        pytest.skip("no mount namespace on this machine: the filesystem is writable")
    target = tmp_path / "escaped.txt"
    code = ("import os\n"
            "def write(path):\n"
            "    try:\n"
            "        open(path, 'w').write('x')\n"
            "        return 'written'\n"
            "    except OSError as err:\n"
            "        return 'refused'\n"
            "def write_here():\n"
            "    open('inside.txt', 'w').write('x')\n"
            "    return os.path.exists('inside.txt')\n")
    run = run_tests(code, [f"assert write({str(target)!r}) == 'refused'",
                           "assert write('/tmp/cope-escape-test') == 'refused'",
                           "assert write_here()"], timeout_s=10)
    assert (run.passed, run.total) == (3, 3), run.stderr
    assert not target.exists()


def test_huge_stdout_is_capped_in_the_parent():
    import tracemalloc

    from cope.sandbox import SandboxLimits

    code = ("import sys\n"
            "def flood():\n"
            "    block = 'x' * (1 << 20)\n"
            "    for _ in range(300):\n"
            "        sys.stdout.write(block)\n"
            "    return True\n")
    limits = SandboxLimits(timeout_s=30, max_output_bytes=64 * 1024)
    tracemalloc.start()
    try:
        run = run_tests(code, ["assert flood()"], limits=limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert run.passed == 1, run.error
    assert len(run.stdout) == 64 * 1024 and run.output_truncated
    assert peak < 20 * (1 << 20), f"the parent held {peak >> 20} MB"


def test_rlimits_apply_in_the_child():
    from cope.sandbox import SandboxLimits

    code = ("def big():\n"
            "    return len(bytearray(600 << 20))\n"
            "def big_file():\n"
            "    with open('f.bin', 'wb') as fh:\n"
            "        fh.write(b'x' * (4 << 20))\n"
            "    return True\n")
    limits = SandboxLimits(timeout_s=10, memory_mb=256, file_size_mb=1)
    run = run_tests(code, ["assert big() > 0", "assert big_file()"], limits=limits)
    assert (run.passed, run.total) == (0, 2)


def test_isolation_report_names_the_active_layers():
    from cope.sandbox import describe_isolation

    iso = _iso()
    assert iso["probe_ok"]
    text = describe_isolation(iso)
    assert "cleared environment" in text and "rlimits (cpu" in text
    for key, name in (("network_namespace", "network namespace"),
                      ("pid_namespace", "PID namespace"),
                      ("read_only_fs", "read-only filesystem")):
        assert (name in text.split("; not available here")[0]) == bool(iso[key]), key
    off = describe_isolation({"network_namespace": False, "rlimits": ["cpu"]})
    assert "not available here: network namespace, PID namespace, read-only filesystem" in off
