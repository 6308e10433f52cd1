"""Running model-written code against tests, in a child process that cannot forge its score.

The harness (``_HARNESS``) runs in a fresh ``python -I -S``; it receives the solution,
the tests, a random nonce and the number of a result pipe on stdin (never on argv or in
the environment), then reports each test as ``<nonce> <index> <0|1>`` on that pipe. The
candidate's stdout and stderr are only data: printing a result line there counts for
nothing, output without a trailing newline is harmless, and a test that exits the
process early fails that test and every later one.

Isolation, in layers (``isolation()`` says which are active on this machine; the report
prints it):
- namespaces, when ``unshare`` may create them (root, or unprivileged user namespaces):
  a new network namespace (no interface but a down loopback), a new PID namespace with
  its own /proc (the candidate sees neither the parent nor its environment; when the
  harness — PID 1 there — ends or is killed, the kernel kills every process in it, also
  ones that called ``setsid``), and a new mount namespace in which every mount except
  the temporary working directory is remounted read-only, after which the harness drops
  all capabilities (bounding set included, ``no_new_privs``), so it cannot remount;
- always: a cleared environment (PATH, LANG, HOME=TMPDIR=the work dir), a fresh temporary
  working directory removed afterwards, stdin from /dev/null, its own session and process
  group (killed as a whole at the timeout), and rlimits set in the child: CPU seconds,
  address space, file size, open files, processes, no core files;
- always: a preamble that makes ``socket`` connections raise (for machines without
  namespaces); captured stdout/stderr are read incrementally and capped.

What is not isolated: without namespaces the candidate can read any file the user can,
write wherever the user can, see other processes (``/proc``), and a ``setsid`` child that
escapes the process group is only found by an environment marker it could clear.
Even with namespaces the candidate can read world- or user-readable files (read-only).
The candidate runs in the harness's interpreter, so code written against this harness
forges its results in a few lines (the nonce and the pipe are in the caller's frame,
``sys._getframe(1).f_locals``), and a function returning an object whose ``__eq__`` is
always true passes ``assert f(x) == y``; no in-process harness prevents either. This
contains model mistakes and blind forgery (a printed marker, an early exit); it is not a
security boundary against a determined attacker — use a VM for that.
"""

from __future__ import annotations

import functools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

_FENCE_RE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
# an opening fence whose closing one never came (the reply hit max_tokens)
_OPEN_FENCE_RE = re.compile(r"```(?:python|py)?[ \t]*\n(.*)\Z", re.DOTALL)

# The harness. It runs before any candidate code, so what it reads (the nonce, the pipe)
# never passes through a place the candidate writes to.
_HARNESS = r'''
import json, os, sys

def _lockdown(work):
    """Read-only mounts except `work`, then drop every capability (cannot remount)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    flags_of = {"ro": 1, "nosuid": 2, "nodev": 4, "noexec": 8, "noatime": 1024,
                "nodiratime": 2048, "relatime": 1 << 21}
    MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
    ok = libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) == 0
    ok = ok and libc.mount(work.encode(), work.encode(), None, MS_BIND | MS_REC, None) == 0
    for line in open("/proc/self/mountinfo"):
        parts = line.split()
        target = parts[4].encode().decode("unicode_escape")
        if target == work or target.startswith(work + "/"):
            continue
        flags = MS_REMOUNT | MS_BIND | 1
        for opt in parts[5].split(","):
            flags |= flags_of.get(opt, 0)
        if libc.mount(None, target.encode(), None, flags, None) != 0 and target == "/":
            ok = False
    for cap in range(64):  # the bounding set: an exec cannot give capabilities back
        libc.prctl(24, cap, 0, 0, 0)
    class Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("e", ctypes.c_uint32), ("p", ctypes.c_uint32), ("i", ctypes.c_uint32)]
    caps = libc.capset(ctypes.byref(Hdr(0x20080522, 0)), (Data * 2)()) == 0
    libc.prctl(38, 1, 0, 0, 0)  # no_new_privs
    return ok, caps

def _main():
    cfg = json.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out = os.fdopen(cfg["fd"], "w", buffering=1)
    nonce = cfg["nonce"]
    ro, caps = _lockdown(cfg["work"]) if cfg["lockdown"] else (False, False)
    # the cwd still points into the mount underneath the bind mount (now read-only):
    # enter the work dir again so relative paths land on the writable bind mount
    os.chdir(cfg["work"])
    out.write(f"{nonce} iso ro={int(ro)} nocaps={int(caps)}\n")
    import socket as _s
    def _blocked(*a, **k):
        raise OSError("network access is disabled in the cope sandbox")
    _s.socket.connect = _s.socket.connect_ex = _blocked
    _s.create_connection = _s.getaddrinfo = _blocked
    ns = {"__name__": "__solution__"}
    try:
        exec(compile(cfg["code"], "<solution>", "exec"), ns)
    except BaseException as err:
        out.write(f"{nonce} error {type(err).__name__}\n")
        ns = None
    for i, test in enumerate(cfg["tests"]):
        ok = False
        if ns is not None:
            try:
                exec(compile(test, "<test>", "exec"), dict(ns))
                ok = True
            except BaseException:
                ok = False
        out.write(f"{nonce} {i} {int(ok)}\n")
    out.write(f"{nonce} done\n")
    out.flush()
    sys.stdout.flush()
    os._exit(0)  # no atexit hooks or finalisers of the candidate's run after the results

_main()
'''


def extract_code(text: str) -> str | None:
    """The last fenced code block, else the code after a fence never closed (a reply cut
    by max_tokens), else the reply itself if it looks like Python."""
    if not text:
        return None
    blocks = _FENCE_RE.findall(text)
    if blocks:
        return blocks[-1].strip() or None
    cut = _OPEN_FENCE_RE.search(text)
    if cut:  # the fence itself is not Python: run what follows it
        return cut.group(1).strip() or None
    if re.search(r"^\s*(def|class|import|from)\s", text, re.MULTILINE):
        return text.strip()
    return None


@dataclass(frozen=True)
class TestRun:
    passed: int
    total: int
    timed_out: bool = False
    error: str = ""
    stdout: str = ""  # the candidate's output, capped (data only, never parsed for results)
    stderr: str = ""
    output_truncated: bool = False  # stdout or stderr went past the cap
    isolation: dict = field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return self.passed / self.total if self.total else 0.0


@dataclass(frozen=True)
class SandboxLimits:
    """Per-run resource limits (rlimits in the child) and the captured-output cap."""

    timeout_s: float = 5.0
    memory_mb: int = 1024
    file_size_mb: int = 1
    open_files: int = 64
    processes: int = 16  # extra processes the candidate may start (not enforced for root)
    max_output_bytes: int = 64 * 1024


_NS_FLAGS = ("--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc")


@functools.cache
def _namespace_prefix() -> tuple[str, ...]:
    """The widest ``unshare`` this machine allows: net+mount+pid, else net only, else none."""
    exe = shutil.which("unshare")
    if not exe:
        return ()
    candidates = [(exe, *_NS_FLAGS)]
    if os.geteuid() != 0:
        candidates.append((exe, "--map-root-user", *_NS_FLAGS))
    candidates.append((exe, "--net"))
    for prefix in candidates:
        try:
            if subprocess.run([*prefix, "true"], capture_output=True,
                              timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def _user_processes() -> int:
    uid = os.getuid()
    count = 0
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def _child_setup(limits: SandboxLimits) -> None:  # runs in the child between fork and exec
    import resource

    # above the wall-clock timeout, so the timeout (reported as such) normally fires first
    cpu = int(2 * limits.timeout_s) + 2
    for res, value in ((resource.RLIMIT_CPU, cpu),
                       (resource.RLIMIT_AS, limits.memory_mb << 20),
                       (resource.RLIMIT_FSIZE, limits.file_size_mb << 20),
                       (resource.RLIMIT_NOFILE, limits.open_files),
                       (resource.RLIMIT_CORE, 0)):
        resource.setrlimit(res, (value, value))
    # RLIMIT_NPROC counts all of the user's processes, so the limit is "what runs now + k"
    nproc = _user_processes() + limits.processes
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


class _CappedReader(threading.Thread):
    """Drains a pipe so the child never blocks on it; keeps the first `cap` bytes."""

    def __init__(self, fd: int, cap: int):
        super().__init__(daemon=True)
        self.fd, self.cap = fd, cap
        self.kept = bytearray()
        self.total = 0

    def run(self) -> None:
        try:
            while chunk := os.read(self.fd, 1 << 16):
                self.total += len(chunk)
                room = self.cap - len(self.kept)
                if room > 0:
                    self.kept += chunk[:room]
        except OSError:
            pass
        finally:
            os.close(self.fd)

    @property
    def truncated(self) -> bool:
        return self.total > self.cap

    def text(self) -> str:
        return self.kept.decode("utf-8", "replace")


def _kill_marked(marker: str) -> None:
    """Without a PID namespace: kill leftovers that still carry this run's env marker."""
    needle = f"COPE_SANDBOX={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle in fh.read().split(b"\0"):
                    os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass


def run_tests(code: str, tests: Sequence[str], timeout_s: float = 5.0,
              memory_mb: int = 1024, limits: SandboxLimits | None = None) -> TestRun:
    """Define `code`, then run each test (assert statements) in its own namespace copy."""
    if not tests:
        return TestRun(0, 0)
    if isinstance(tests, str):
        raise TypeError("tests must be a list of assert statements, not one string")
    limits = limits or SandboxLimits(timeout_s=timeout_s, memory_mb=memory_mb)
    prefix = _namespace_prefix()
    lockdown = "--mount" in prefix
    nonce = secrets.token_hex(16)
    marker = secrets.token_hex(8)
    work = tempfile.mkdtemp(prefix="cope-sandbox-")
    res_r, res_w = os.pipe()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": work, "TMPDIR": work,
           "COPE_SANDBOX": marker}
    payload = json.dumps({"code": code, "tests": list(tests), "nonce": nonce, "fd": res_w,
                          "work": os.path.realpath(work), "lockdown": lockdown}).encode()
    timed_out = False
    try:
        proc = subprocess.Popen(
            [*prefix, sys.executable, "-I", "-S", "-c", _HARNESS], cwd=work, env=env,
            stdin=subprocess.PIPE, stdout=out_w, stderr=err_w, pass_fds=(res_w,),
            start_new_session=True, preexec_fn=lambda: _child_setup(limits))
        for fd in (res_w, out_w, err_w):
            os.close(fd)
        readers = [_CappedReader(res_r, 1 << 20), _CappedReader(out_r, limits.max_output_bytes),
                   _CappedReader(err_r, limits.max_output_bytes)]
        for r in readers:
            r.start()
        try:
            proc.stdin.write(payload)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=limits.timeout_s + (0.5 if prefix else 0.0))
        except subprocess.TimeoutExpired:
            timed_out = True
        # The whole group goes, finished or not: a candidate's background children too.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        if "--pid" not in prefix:
            _kill_marked(marker)
        for r in readers:
            r.join(timeout=2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results: dict[int, bool] = {}
    isolation = {"network_namespace": "--net" in prefix, "pid_namespace": "--pid" in prefix,
                 "read_only_fs": False, "capabilities_dropped": False}
    error = ""
    for line in readers[0].text().splitlines():
        head, _, rest = line.partition(" ")
        if head != nonce:
            continue
        if rest.startswith("iso "):
            kv = dict(item.split("=") for item in rest[4:].split())
            isolation["read_only_fs"] = kv.get("ro") == "1"
            isolation["capabilities_dropped"] = kv.get("nocaps") == "1"
        elif rest.startswith("error "):
            error = f"solution raised {rest[6:]}"
        elif rest != "done":
            index, _, ok = rest.partition(" ")
            if index.isdigit() and int(index) < len(tests):
                results[int(index)] = ok == "1"
    stderr = readers[2].text()
    if timed_out:
        error = "timeout"
    elif not error and len(results) < len(tests):
        error = (stderr.strip().splitlines() or ["the harness stopped early"])[-1][:200]
    return TestRun(sum(results.values()), len(tests), timed_out=timed_out, error=error,
                   stdout=readers[1].text(), stderr=stderr,
                   output_truncated=readers[1].truncated or readers[2].truncated,
                   isolation=isolation)


@functools.cache
def isolation() -> dict:
    """Which isolation layers are active here (probed once by running a trivial test)."""
    started = time.monotonic()
    probe = run_tests("x = 1", ["assert x == 1"], timeout_s=10)
    return {**probe.isolation, "cleared_env": True, "temp_cwd": True,
            "rlimits": ["cpu", "address space", "file size", "open files", "processes",
                        "core"],
            "probe_ok": probe.passed == 1, "probe_s": round(time.monotonic() - started, 3)}


def describe_isolation(iso: dict) -> str:
    """One line for the report."""
    on = [name for key, name in (("network_namespace", "network namespace"),
                                 ("pid_namespace", "PID namespace (own /proc, tree killed)"),
                                 ("read_only_fs", "read-only filesystem except the work dir"),
                                 ("capabilities_dropped", "capabilities dropped"))
          if iso.get(key)]
    off = [name for key, name in (("network_namespace", "network namespace"),
                                  ("pid_namespace", "PID namespace"),
                                  ("read_only_fs", "read-only filesystem"))
           if not iso.get(key)]
    text = ("active: " + ", ".join(on + ["cleared environment", "temporary working "
                                          "directory", "rlimits (" + ", ".join(
                                              iso.get("rlimits", [])) + ")",
                                          "socket-blocking preamble"]))
    if off:
        text += "; not available here: " + ", ".join(off)
    return text
