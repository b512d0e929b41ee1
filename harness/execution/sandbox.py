"""Run one untrusted program and judge it: passed, failed, timeout, error or unavailable.

Isolation, strongest available first (the level in force is reported with every verdict):
- ``bubblewrap``: read-only root, private /tmp, the program's throwaway directory as the only
  writable place, no network, new PID namespace (everything dies with it), uid ``nobody``;
- ``unshare``: new user, network and PID namespaces, run as ``nobody``;
- ``rlimits``: resource limits and an own process group only.
In every mode the program gets its own session and process group, CPU time, memory, process-count
and file-size limits; output goes to size-limited files; on timeout the whole group is killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from functools import cache

from harness.execution.languages import SANDBOX_PATH, Language

NOBODY = 65534
STDERR_TAIL = 2000


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock, build and run each
    cpu_s: int = 20
    memory_bytes: int = 4 << 30  # RLIMIT_DATA: writable private memory (JVM and V8 reserve far more address space)
    file_bytes: int = 16 << 20
    processes: int = 512  # RLIMIT_NPROC counts the whole uid: all parallel sandboxes share it


@dataclass
class Verdict:
    status: str  # passed | failed | timeout | error | unavailable
    exit_code: int | None
    wall_s: float
    stderr: str
    isolation: str
    detail: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _can_drop_to_nobody() -> bool:
    return os.geteuid() == 0


@cache
def isolation_level() -> str:
    """Probe once which isolation works on this machine."""
    probe = ["true"]
    for level, prefix in (("bubblewrap", _bwrap_prefix("/tmp")), ("unshare", _unshare_prefix())):
        if prefix is None:
            continue
        try:
            done = subprocess.run(prefix + probe, capture_output=True, timeout=20,
                                  preexec_fn=_preexec(Limits()), cwd="/tmp")  # fmt: skip
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return level
    return "rlimits"


def _bwrap_prefix(workdir: str) -> list[str] | None:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    return [bwrap, "--ro-bind", "/", "/", "--tmpfs", "/tmp", "--bind", workdir, "/work", "--chdir", "/work",
            "--proc", "/proc", "--dev", "/dev", "--unshare-all", "--die-with-parent", "--new-session",
            "--setenv", "HOME", "/work", "--setenv", "PATH", SANDBOX_PATH, "--"]  # fmt: skip


def _unshare_prefix() -> list[str] | None:
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    return [unshare, "--user", "--net", "--pid", "--fork", "--kill-child", "--"]


def _preexec(limits: Limits):
    def setup() -> None:
        os.setsid()  # own session and process group: the group is what we kill
        for res, value in ((resource.RLIMIT_CPU, limits.cpu_s), (resource.RLIMIT_DATA, limits.memory_bytes),
                           (resource.RLIMIT_FSIZE, limits.file_bytes), (resource.RLIMIT_NPROC, limits.processes),
                           (resource.RLIMIT_CORE, 0)):  # fmt: skip
            resource.setrlimit(res, (value, value))
        if _can_drop_to_nobody():
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)

    return setup


def _run(
    cmd: list[str], workdir: str, limits: Limits, env: dict[str, str], isolation: str
) -> tuple[int | None, bool, str]:
    """Returns (exit code, timed out, stderr tail)."""
    if isolation == "bubblewrap":
        prefix = _bwrap_prefix(workdir) or []
        for key, value in env.items():
            prefix[-1:-1] = ["--setenv", key, value]
        cwd = workdir
    elif isolation == "unshare":
        prefix = _unshare_prefix() or []
        cwd = workdir
    else:
        prefix, cwd = [], workdir
    full_env = {"PATH": SANDBOX_PATH, "HOME": workdir, "LANG": "C.UTF-8", **env}
    out_path, err_path = os.path.join(workdir, ".stdout"), os.path.join(workdir, ".stderr")
    status_r, status_w = os.pipe()  # bubblewrap reports the sandbox's init pid here
    if isolation == "bubblewrap":
        prefix[-1:-1] = ["--json-status-fd", str(status_w)]
    try:
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(prefix + cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    env=full_env, preexec_fn=_preexec(limits), pass_fds=(status_w,))  # fmt: skip
            os.close(status_w)
            init_pid = _sandbox_init_pid(status_r) if isolation == "bubblewrap" else None
            timed_out = False
            try:
                proc.wait(timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                if init_pid:
                    # Killing the PID namespace's init makes the kernel kill everything inside.
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(init_pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=10)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole group, whatever it left behind
                proc.wait()
                if init_pid:
                    _wait_gone(init_pid)  # nothing of the program outlives this call
    finally:
        os.close(status_r)
    with open(err_path, "rb") as f:
        f.seek(max(0, os.path.getsize(err_path) - STDERR_TAIL))
        stderr = f.read().decode("utf-8", "replace")
    return (None if timed_out else proc.returncode), timed_out, stderr


def _alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie counts as gone (a PID namespace's init turns zombie only
    after the kernel has killed and reaped everything else inside the namespace)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_gone(pid: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.01)


def _sandbox_init_pid(status_fd: int) -> int | None:
    """The 'child-pid' of bubblewrap's first JSON status line (written as soon as it has started)."""
    ready, _, _ = select.select([status_fd], [], [], 1.0)
    if not ready:
        return None
    line = os.read(status_fd, 4096).decode(errors="replace").split("\n", 1)[0]
    with contextlib.suppress(ValueError, AttributeError):
        return int(json.loads(line)["child-pid"])
    return None


def run_program(language: Language, source: str, limits: Limits | None = None, isolation: str | None = None) -> Verdict:
    """Build (if the language compiles) and run ``source`` in a throwaway directory. ``isolation``
    forces a weaker level than the best available (tests of the fallbacks)."""
    limits = limits or Limits()
    missing = language.missing()
    isolation = isolation or isolation_level()
    if missing:
        return Verdict("unavailable", None, 0.0, "", isolation, f"{missing} not found: {language.install_hint}")
    start = time.perf_counter()
    workdir = tempfile.mkdtemp(prefix="sdsat-exec-")
    try:
        os.chmod(workdir, 0o777)  # the program runs as nobody
        with open(os.path.join(workdir, language.file_name), "w") as f:
            f.write(source)
        env = dict(language.env)
        if isolation != "bubblewrap":
            env = {k: v.replace("/tmp/", os.path.join(workdir, ".")) for k, v in env.items()}
        for step, cmd in (("build", language.build), ("run", language.run)):
            if cmd is None:
                continue
            code, timed_out, stderr = _run(list(cmd), workdir, limits, env, isolation)
            if timed_out:
                return Verdict("timeout", None, time.perf_counter() - start, stderr, isolation, f"{step} timed out")
            if code != 0:
                status = "error" if step == "build" else "failed"
                return Verdict(status, code, time.perf_counter() - start, stderr, isolation, f"{step} failed")
        return Verdict("passed", 0, time.perf_counter() - start, stderr, isolation)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
