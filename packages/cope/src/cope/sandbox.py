"""Running model-written code against tests: a subprocess with a timeout and no network.

Isolation, in layers:
- a fresh ``python -I`` (isolated mode: no user site, no PYTHON* variables) in a temporary
  working directory, with an empty environment;
- no network: inside a new network namespace (``unshare -n``) where the kernel allows it,
  and in any case a preamble that replaces ``socket`` connections with an error;
- resource limits (CPU seconds, address space, file size) and a wall-clock timeout that
  kills the whole process group.
This keeps honest mistakes (infinite loops, network calls) contained; it is not a
security boundary against hostile code.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

_FENCE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)

_PREAMBLE = '''
import socket as _s
def _blocked(*a, **k):
    raise OSError("network access is disabled in the cope sandbox")
_s.socket.connect = _blocked
_s.socket.connect_ex = _blocked
_s.create_connection = _blocked
_s.getaddrinfo = _blocked
del _s
'''

_RUNNER = '''
import sys, json
results = []
for test in json.loads(sys.argv[1]):
    try:
        exec(compile(test, "<test>", "exec"), dict(_NS))
        results.append(True)
    except BaseException:
        results.append(False)
print("COPE_RESULTS=" + json.dumps(results))
'''


def extract_code(text: str) -> str | None:
    """The last fenced code block, else the reply itself if it looks like Python."""
    if not text:
        return None
    blocks = _FENCE_RE.findall(text)
    if blocks:
        return blocks[-1].strip() or None
    if re.search(r"^\s*(def|class|import|from)\s", text, re.MULTILINE):
        return text.strip()
    return None


@dataclass(frozen=True)
class TestRun:
    passed: int
    total: int
    timed_out: bool = False
    error: str = ""

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


@functools.cache
def _netns_prefix() -> tuple[str, ...]:
    """``unshare -n`` if this kernel lets us make a network namespace, else nothing."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    try:
        ok = subprocess.run([exe, "-n", "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return (exe, "-n") if ok else ()


def _limits(cpu_s: int, memory_bytes: int) -> None:  # runs in the child before exec
    import resource

    os.setsid()
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


def run_tests(code: str, tests: Sequence[str], timeout_s: float = 5.0,
              memory_mb: int = 1024) -> TestRun:
    """Define `code`, then run each test (assert statements) in its own namespace copy."""
    if not tests:
        return TestRun(0, 0)
    import json

    program = (_PREAMBLE + "\n_NS = {}\n"
               + f"exec(compile({code!r}, '<solution>', 'exec'), _NS)\n" + _RUNNER)
    with tempfile.TemporaryDirectory(prefix="cope-sandbox-") as work:
        cmd = [*_netns_prefix(), sys.executable, "-I", "-c", program, json.dumps(list(tests))]
        proc = subprocess.Popen(cmd, cwd=work, env={"PATH": "/usr/bin:/bin"},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: _limits(int(timeout_s) + 1,
                                                           memory_mb << 20))
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the child is its own group leader
            except ProcessLookupError:
                pass
            proc.communicate()
            return TestRun(0, len(tests), timed_out=True, error="timeout")
    for line in out.splitlines():
        if line.startswith("COPE_RESULTS="):
            results = json.loads(line[len("COPE_RESULTS="):])
            return TestRun(sum(results), len(tests))
    return TestRun(0, len(tests), error=(err.strip().splitlines() or ["no output"])[-1][:200])
