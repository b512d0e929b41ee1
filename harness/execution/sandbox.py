"""Run one untrusted program and judge it: passed, failed, timeout, error or unavailable.

The harness (often root) trusts nothing the program could have touched:
- the program's files live in a private tmpfs inside the sandbox (bubblewrap, unshare), copied in from
  memory; nothing of them is on the host's disk, so nothing is left behind, whatever happens;
- its output comes through pipes the harness holds, read with byte limits (no path is ever opened
  after the program ran);
- every program has a control group of its own (memory limit over every kind of mapping, process
  limit) and, as root, a uid of its own, so concurrent programs share no limit and no file;
- everything it starts dies at the verdict (PID namespace and control group killed) and when the
  harness dies (parent-death signals on the sandbox's root process).

Isolation levels, strongest first; every verdict records the one it had:
- ``bubblewrap``: only the toolchain directories (/usr, /etc, /bin, /lib...) read-only, private /tmp,
  /dev and /proc, no /run, /var, /home or /root; new user, PID, network, IPC and UTS namespaces;
- ``unshare`` (root only): new mount, PID, network, IPC and UTS namespaces, a new /proc, tmpfs over
  /tmp, /var/tmp, /dev/shm, /run, /home, /root, /mnt, /srv, /media and the harness's checkout; the host's
  other directories stay readable by file permissions;
- ``rlimits``: resource limits and a private directory only: not a sandbox, used only when asked for
  by name.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import resource
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from harness.errors import HarnessError
from harness.execution import cgroup
from harness.execution.languages import PROOF_PREFIX, SANDBOX_PATH, Language

LEVELS = ("bubblewrap", "unshare", "rlimits")
NAMESPACE_LEVELS = ("bubblewrap", "unshare")
SLOT_UID_BASE = 200_000  # one uid per concurrent program; no account on a normal machine has these
SLOTS = 256
TAIL_BYTES = 4000  # of stdout and stderr kept in the verdict
OUTPUT_CAP = 64 << 20  # bytes read from one stream before the harness closes it (the program gets EPIPE)
EXIT_GRACE_S = 0.5  # after the program exits, how long its pipes may stay open (a lingering child)
PR_SET_PDEATHSIG = 1
BWRAP_INSTALL_HINT = "apt-get install bubblewrap"


class SandboxUnavailable(HarnessError):
    """No isolation level that the caller accepts works on this machine."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float | None = None  # wall clock of the run step; None: the language's own timeout
    build_timeout_s: float | None = None  # None: the language's own
    cpu_s: int = 60
    memory_bytes: int = 4 << 30  # per program, every mapping (control group); RLIMIT_AS where there is none
    file_bytes: int = 16 << 20
    tmpfs_bytes: int = 512 << 20  # each of the sandbox's /work and /tmp
    processes: int = 256


@dataclass
class Verdict:
    status: str  # passed | failed | timeout | error | unavailable
    exit_code: int | None
    wall_s: float
    stderr: str
    isolation: str
    detail: str = ""
    stdout: str = ""
    tests_completed: bool | None = None  # the proof token was printed (None: no proof asked for)
    memory_limit: str = ""  # cgroup-v2 | cgroup-v1 | rlimit-as

    def to_dict(self) -> dict:
        return asdict(self)


# ---- which isolation -------------------------------------------------------------------------------


def _is_root() -> bool:
    return os.geteuid() == 0


_probe_lock = threading.Lock()


def available_levels() -> tuple[str, ...]:
    """The levels that work here, probed once (by running ``true`` in each) whichever thread asks first."""
    with _probe_lock:
        return _probe_levels()


@cache
def _probe_levels() -> tuple[str, ...]:
    clear_stale()
    found = []
    for level in NAMESPACE_LEVELS:
        if level == "bubblewrap" and shutil.which("bwrap") is None:
            continue
        if level == "unshare" and (shutil.which("unshare") is None or not _is_root()):
            continue
        with contextlib.suppress(OSError, SandboxUnavailable):
            if _execute(("true",), None, {}, {}, Limits(timeout_s=20), level, None).status == "passed":
                found.append(level)
    return (*found, "rlimits")


def isolation_level(requested: str | None = None) -> str:
    """``requested`` if it works here; by default the strongest namespace level, never ``rlimits``."""
    levels = available_levels()
    if requested is not None:
        if requested not in LEVELS:
            raise SandboxUnavailable(f"unknown isolation '{requested}' (choose from {', '.join(LEVELS)})")
        if requested not in levels:
            raise SandboxUnavailable(f"isolation '{requested}' does not work on this machine")
        return requested
    for level in NAMESPACE_LEVELS:
        if level in levels:
            return level
    raise SandboxUnavailable(
        f"no sandbox for generated code: bubblewrap is missing or cannot create namespaces here "
        f"(install it: {BWRAP_INSTALL_HINT}), or pass --isolation rlimits to run it without namespace isolation"
    )


# ---- per-program uid -------------------------------------------------------------------------------


def _slots_dir() -> Path:
    directory = Path(tempfile.gettempdir()) / "sdsat-sandbox-slots"
    directory.mkdir(mode=0o700, exist_ok=True)
    info = directory.lstat()
    if info.st_uid != 0 or info.st_mode & 0o077 or not directory.is_dir():
        raise SandboxUnavailable(f"{directory} is not a private root-owned directory")
    return directory


@contextlib.contextmanager
def _locked_slot(directory: Path, n: int) -> Iterator[bool]:
    """Whether slot ``n`` is ours (held while the context lasts): no live program of any harness has it."""
    fd = os.open(directory / str(n), os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


@contextlib.contextmanager
def _slot_uid() -> Iterator[int | None]:
    """A uid that no other live program of any harness on this machine has (root only; else None).
    Slots are files locked for the program's lifetime in a root-only directory."""
    if not _is_root():
        yield None
        return
    directory = _slots_dir()
    start = secrets.randbelow(SLOTS)
    for n in ((start + i) % SLOTS for i in range(SLOTS)):
        with _locked_slot(directory, n) as ours:
            if ours:
                yield SLOT_UID_BASE + n
                return
    raise SandboxUnavailable(f"all {SLOTS} sandbox slots are busy")


def clear_stale() -> None:
    """What killed harnesses left: programs still running in their control groups die, and what free
    slots' uids made in the shared temporary directories (rlimits working directories) goes."""
    cgroup.kill_stale_groups()
    if not _is_root():
        return
    directory = _slots_dir()
    for uid, entries in _shared_temp_entries_by_owner().items():
        if SLOT_UID_BASE <= uid < SLOT_UID_BASE + SLOTS:
            with _locked_slot(directory, uid - SLOT_UID_BASE) as ours:
                if ours:
                    _remove(entries)


# ---- the commands ----------------------------------------------------------------------------------


def _driver(build: tuple[str, ...] | None, run: tuple[str, ...], status_fd: int) -> str:
    """The bash script (dash takes one-digit descriptors only) run inside the sandbox: build, reporting
    on the status pipe, then run with the status pipe closed, so the program cannot write to it."""
    report = f">&{status_fd}"
    lines = []
    if build is not None:
        lines.append(f"{shlex.join(build)} </dev/null {status_fd}>&- || {{ echo build-failed $? {report}; exit 0; }}")
    lines.append(f"echo built {report}")
    lines.append(f"exec {shlex.join(run)} </dev/null {status_fd}>&-")
    return "\n".join(lines) + "\n"


def _bwrap(script: str, files: dict[str, int], env: dict[str, str], limits: Limits, json_fd: int) -> list[str]:
    cmd = [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/usr",
        "/usr",
        "--ro-bind",
        "/etc",
        "/etc",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            cmd += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            cmd += ["--ro-bind", top, top]
    cmd += ["--proc", "/proc", "--dev", "/dev"]
    for place in ("/tmp", "/work"):
        cmd += ["--size", str(limits.tmpfs_bytes), "--perms", "0700", "--tmpfs", place]
    for name, fd in files.items():
        cmd += ["--perms", "0600", "--file", str(fd), f"/work/{name}"]
    cmd += ["--chdir", "/work", "--clearenv", "--json-status-fd", str(json_fd)]
    for key, value in {"PATH": SANDBOX_PATH, "HOME": "/work", "LANG": "C.UTF-8", **env}.items():
        cmd += ["--setenv", key, value]
    return [*cmd, "--", "/bin/bash", "-c", script]


def _hidden_dirs() -> list[str]:
    """Host directories covered by an empty tmpfs at the unshare level."""
    here = Path(__file__).resolve().parents[2]
    places = [
        "/tmp",
        "/var/tmp",
        "/dev/shm",
        "/run",
        "/home",
        "/root",
        "/mnt",
        "/media",
        "/srv",
        os.getcwd(),
        str(here),
    ]
    return [p for p in dict.fromkeys(places) if os.path.isdir(p)]


def _unshare(script: str, files: dict[str, int], env: dict[str, str], limits: Limits, uid: int | None) -> list[str]:
    """As root: new namespaces, host directories hidden, then the driver as ``uid`` without any
    capability. The root shell stays the PID namespace's init (it waits, never execs), so the program
    is never init and cannot outlive the namespace."""
    who = uid if uid is not None else 65534
    size = limits.tmpfs_bytes
    setup = [f"mount -t tmpfs -o size={size},mode=755 tmpfs {shlex.quote(d)}" for d in _hidden_dirs()]
    setup += ["mkdir -m 700 /tmp/work", f"chown {who}:{who} /tmp/work"]
    setup += [
        f"cat <&{fd} >/tmp/work/{shlex.quote(name)} && chown {who}:{who} /tmp/work/{shlex.quote(name)}"
        for name, fd in files.items()
    ]
    setup += [f"exec {fd}<&-" for fd in files.values()]
    exports = " ".join(
        f"{k}={shlex.quote(v)}"
        for k, v in {"PATH": SANDBOX_PATH, "HOME": "/tmp/work", "LANG": "C.UTF-8", **env}.items()
    )
    drop = (
        f"cd /tmp/work && env -i {exports} setpriv --reuid {who} --regid {who} --clear-groups "
        f"--inh-caps=-all --bounding-set=-all --no-new-privs /bin/bash -c {shlex.quote(script)}"
    )
    # `exit $?` after the driver: bash would exec a script's last command, and the program would become
    # the namespace's init (whose parent-death signal the uid change clears) and outlive a killed harness.
    outer = "set -e\n" + "\n".join(setup) + f"\nset +e\n{drop}\nexit $?\n"
    return [
        shutil.which("unshare") or "unshare",
        "--mount",
        "--propagation",
        "private",
        "--pid",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--net",
        "--ipc",
        "--uts",
        "--",
        "/bin/bash",
        "-c",
        outer,
    ]


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _preexec(limits: Limits, group: cgroup.Group | None, drop_to: int | None):
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        os.setsid()  # own session and process group
        for path in group.procs_files if group else ():
            with open(path, "w") as f:  # joined before anything of the program runs
                f.write(str(os.getpid()))
        rlimits = [
            (resource.RLIMIT_CPU, limits.cpu_s),
            (resource.RLIMIT_FSIZE, limits.file_bytes),
            (resource.RLIMIT_NPROC, limits.processes),
            (resource.RLIMIT_CORE, 0),
        ]
        if group is None:
            rlimits.append((resource.RLIMIT_AS, limits.memory_bytes))
        for res, value in rlimits:
            resource.setrlimit(res, (value, value))
        if drop_to is not None:
            os.setgroups([])
            os.setgid(drop_to)
            os.setuid(drop_to)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # after the uid change, which clears it

    return setup


# ---- running ---------------------------------------------------------------------------------------


class _Tail:
    """The last ``TAIL_BYTES`` of a stream, and how much came."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        self.data += chunk
        if len(self.data) > 2 * TAIL_BYTES:
            del self.data[:-TAIL_BYTES]

    def text(self) -> str:
        return bytes(self.data[-TAIL_BYTES:]).decode("utf-8", "replace")


@dataclass
class _Outcome:
    exit_code: int | None
    timed_out: str | None  # "build" | "run" | None
    build_failed: int | None
    stdout: _Tail
    stderr: _Tail
    capped: bool
    oom: bool
    memory_limit: str
    proof_seen: bool | None  # None: no proof asked for


class _Pumped:
    """Reads the program's stdout, stderr and the driver's status pipe until it exits or its time is up."""

    def __init__(self, proc: subprocess.Popen, proof: bytes | None) -> None:
        self.proc = proc
        # The proof token is looked for in the whole stream as it passes (the tails are for display):
        # output flushed after it, from buffers or exit handlers, cannot push it out of sight.
        self.proof, self.proof_seen, self._carry = proof, False, b""
        self.pipes = {proc.stdout.fileno(): proc.stdout, proc.stderr.fileno(): proc.stderr}
        self.stdout, self.stderr = _Tail(), _Tail()
        self.streams = dict(zip(self.pipes, (self.stdout, self.stderr), strict=True))
        self.status, self.bwrap_status = bytearray(), bytearray()
        self.exit_code: int | None = None
        self.timed_out: str | None = None
        self.capped = False
        self.init_pid: int | None = None

    def pump(self, status_r: int, json_r: int, first_timeout: float, run_timeout: float) -> None:
        sel = selectors.DefaultSelector()
        for fd in [*self.pipes, status_r, json_r]:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        phase, deadline, exited_at = "build", time.monotonic() + first_timeout, None
        while sel.get_map():
            now = time.monotonic()
            if exited_at is None and self.proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > EXIT_GRACE_S:
                break  # something the program left holds its pipes: stop listening
            if exited_at is None and now >= deadline:
                self.timed_out = phase
                sel.close()
                return
            for key, _ in sel.select(timeout=min(0.1, max(0.0, deadline - now))):
                if self._read(key.fd, sel, status_r, json_r) and phase == "build":
                    phase, deadline = "run", time.monotonic() + run_timeout
        sel.close()
        try:
            self.exit_code = self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.timed_out = phase

    def _read(self, fd: int, sel, status_r: int, json_r: int) -> bool:
        """One read; True when it brought the driver's "built"."""
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return False
        if not chunk:
            sel.unregister(fd)
        elif fd == json_r:
            self.bwrap_status += chunk[:4096]
            self.init_pid = self.init_pid or _child_pid(self.bwrap_status)
        elif fd == status_r:
            self.status += chunk[:4096]
            return b"\nbuilt\n" in b"\n" + self.status
        else:
            self.streams[fd].feed(chunk)
            if self.proof and fd == self.proc.stdout.fileno() and not self.proof_seen:
                window = self._carry + chunk
                self.proof_seen = self.proof in window
                self._carry = window[-len(self.proof) :]
            if self.streams[fd].total > OUTPUT_CAP:
                self.capped = True
                sel.unregister(fd)
                self.pipes[fd].close()  # the harness stops reading: the program's next write fails (EPIPE)
        return False

    def outcome(self, oom: bool, memory_limit: str) -> _Outcome:
        self.proc.stdout.close()
        self.proc.stderr.close()
        failed = next(
            (
                line.split()
                for line in self.status.decode(errors="replace").splitlines()
                if line.startswith("build-failed")
            ),
            None,
        )
        build_code = None if failed is None else int(failed[1]) if failed[1:2] and failed[1].isdigit() else -1
        seen = None if self.proof is None else self.proof_seen
        return _Outcome(
            self.exit_code, self.timed_out, build_code, self.stdout, self.stderr, self.capped, oom, memory_limit, seen
        )


def _child_pid(status: bytearray) -> int | None:
    """The PID namespace's init, from bubblewrap's first JSON status line."""
    for line in bytes(status).decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return int(json.loads(line)["child-pid"])
    return None


def _launch(
    isolation: str,
    script: str,
    files: dict[str, bytes],
    fds: dict[str, int],
    env: dict[str, str],
    limits: Limits,
    uid: int | None,
    json_w: int,
) -> tuple[list[str], int | None, str, dict, str | None]:
    """The level's command line: (argv, uid to drop to before exec, cwd, environment, host directory)."""
    if isolation == "bubblewrap":
        return _bwrap(script, fds, env, limits, json_w), uid, "/", {"PATH": SANDBOX_PATH}, None
    if isolation == "unshare":
        return _unshare(script, fds, env, limits, uid), None, "/", {"PATH": SANDBOX_PATH}, None
    if uid is not None:  # a harness killed mid-run may have left a program of this uid, and its files
        cgroup.kill_stale_groups()
        _clear_leftovers(uid)
    workdir = _private_dir(files, uid)
    own = {k: v.replace("/tmp/", f"{workdir}/.") for k, v in env.items()}
    env = {"PATH": SANDBOX_PATH, "HOME": workdir, "LANG": "C.UTF-8", "TMPDIR": workdir, **own}
    return ["/bin/bash", "-c", script], uid, workdir, env, workdir


def _execute(
    run: tuple[str, ...],
    build: tuple[str, ...] | None,
    files: dict[str, bytes],
    env: dict[str, str],
    limits: Limits,
    isolation: str,
    language: Language | None,
    proof: bytes | None = None,
) -> Verdict:
    start = time.perf_counter()
    run_timeout = limits.timeout_s or (language.run_timeout_s if language else 15.0)
    build_timeout = limits.build_timeout_s or (language.build_timeout_s if language else 15.0)
    fds = {name: _memfd(name, data) for name, data in files.items()}
    status_r, status_w = os.pipe()  # the driver's "built" / "build-failed N"
    json_r, json_w = os.pipe()  # bubblewrap's status: the PID namespace's init
    owned = [*fds.values(), status_r, status_w, json_r, json_w]  # closed however this ends
    workdir, group = None, None
    with _slot_uid() as uid:
        try:
            group = cgroup.open_group(limits.memory_bytes, limits.processes)
            cmd, drop_to, cwd, env, workdir = _launch(
                isolation, _driver(build, run, status_w), files, fds, env, limits, uid, json_w
            )
            proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                preexec_fn=_preexec(limits, group, drop_to),
                pass_fds=(status_w, json_w, *fds.values()),
            )
            _close(owned, status_w, json_w)  # the program holds the write ends now
            timeouts = (build_timeout if build else run_timeout, run_timeout)
            outcome = _watch(proc, proof, status_r, json_r, timeouts, isolation, group)
        finally:
            _clean_up(group, owned, workdir, uid)
    return _judge(outcome, time.perf_counter() - start, isolation)


def _close(owned: list[int], *fds: int) -> None:
    for fd in fds:
        owned.remove(fd)
        os.close(fd)


def _watch(
    proc: subprocess.Popen,
    proof: bytes | None,
    status_r: int,
    json_r: int,
    timeouts: tuple[float, float],
    isolation: str,
    group: cgroup.Group | None,
) -> _Outcome:
    """Pump the program's output and status until it ends or times out; it dies here either way."""
    pumped = _Pumped(proc, proof)
    try:
        pumped.pump(status_r, json_r, *timeouts)
    finally:
        _kill(proc, pumped.init_pid if isolation == "bubblewrap" else None)
    memory_limit = f"cgroup-{group.hierarchy.kind}" if group else "rlimit-as"
    return pumped.outcome(bool(group and group.memory_peak_exceeded()), memory_limit)


def _clean_up(group: cgroup.Group | None, owned: list[int], workdir: str | None, uid: int | None) -> None:
    """Whatever the program started dies, the descriptors close, and (rlimits) what it left goes."""
    if group is not None:
        group.kill_all()
    for fd in owned:
        with contextlib.suppress(OSError):
            os.close(fd)
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)
        if uid is not None:
            _clear_leftovers(uid)


def _private_dir(files: dict[str, bytes], uid: int | None) -> str:
    """rlimits only: a 0700 directory owned by the program's own uid, written before it starts."""
    workdir = tempfile.mkdtemp(prefix="sdsat-exec-")
    for name, data in files.items():
        with open(os.path.join(workdir, name), "xb") as f:
            f.write(data)
    if uid is not None:
        for path in [workdir, *(os.path.join(workdir, n) for n in files)]:
            os.chown(path, uid, uid, follow_symlinks=False)
    return workdir


SHARED_TEMP_DIRS = (tempfile.gettempdir(), "/var/tmp", "/dev/shm")


def _shared_temp_entries() -> Iterator[os.DirEntry]:
    """The top entries of the world-writable directories that rlimits programs share with the host.
    Anything a program makes there has one (the directories are sticky: it cannot write into another
    uid's), so removing a uid's top entries removes all it made."""
    for top in SHARED_TEMP_DIRS:
        with contextlib.suppress(OSError):
            yield from os.scandir(top)


def _shared_temp_entries_by_owner() -> dict[int, list[os.DirEntry]]:
    owned: dict[int, list[os.DirEntry]] = {}
    for entry in _shared_temp_entries():
        with contextlib.suppress(OSError):
            owned.setdefault(entry.stat(follow_symlinks=False).st_uid, []).append(entry)
    return owned


def _clear_leftovers(uid: int) -> None:
    """rlimits only: what programs of ``uid`` made in the shared directories goes, so that the next
    program given this slot finds nothing of an earlier one. The caller holds the slot and has killed
    what could still run as ``uid``."""
    _remove(_shared_temp_entries_by_owner().get(uid, []))


def _remove(entries: list[os.DirEntry]) -> None:
    """``rmtree`` works on descriptors and never follows links."""
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)


def _kill(proc: subprocess.Popen, init_pid: int | None) -> None:
    """The program's PID namespace and session die here (its control group right after, by the caller)."""
    if init_pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(init_pid, signal.SIGKILL)  # the namespace's init: the kernel kills all inside
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _judge(o: _Outcome, wall_s: float, isolation: str) -> Verdict:
    def verdict(status: str, detail: str, completed: bool | None = None) -> Verdict:
        return Verdict(
            status, o.exit_code, wall_s, o.stderr.text(), isolation, detail, o.stdout.text(), completed, o.memory_limit
        )

    if o.timed_out:
        return verdict("timeout", f"{o.timed_out} timed out")
    if o.build_failed is not None:
        return verdict("error", f"build failed (exit {o.build_failed})")
    if o.exit_code != 0:
        how = (
            f"killed by signal {-o.exit_code}" if o.exit_code is not None and o.exit_code < 0 else f"exit {o.exit_code}"
        )
        return verdict("failed", f"run failed ({how})" + (", memory limit reached" if o.oom else ""), o.proof_seen)
    if o.capped:
        return verdict("failed", f"output over {OUTPUT_CAP} bytes", o.proof_seen)
    if o.proof_seen is False:
        return verdict("failed", "exit 0 without proof that the tests ran to their end", False)
    return verdict("passed", "exit 0", o.proof_seen)


def run_program(
    language: Language,
    source: str,
    limits: Limits | None = None,
    isolation: str | None = None,
    proof: str | None = None,
) -> Verdict:
    """Build (if the language compiles) and run ``source``. With ``proof``, a pass also needs that token
    on the program's stdout (the tests ran to their end); exit status 0 alone is a failure."""
    limits = limits or Limits()
    level = isolation_level(isolation)
    missing = language.missing()
    if missing:
        return Verdict("unavailable", None, 0.0, "", level, f"{missing} not found: {language.install_hint}")
    files = {language.file_name: source.encode("utf-8", "surrogateescape")}
    proof_bytes = None if proof is None else proof.encode()
    return _execute(language.run, language.build, files, dict(language.env), limits, level, language, proof_bytes)


def run_tests(
    language: Language, head: str, tests: str, limits: Limits | None = None, isolation: str | None = None
) -> Verdict:
    """Judge ``head`` (prompt + completion [+ suffix]) against trusted ``tests``, with a fresh proof token."""
    token = PROOF_PREFIX + secrets.token_hex(16)
    return run_program(language, language.assemble(head, tests, token), limits, isolation, proof=token)
