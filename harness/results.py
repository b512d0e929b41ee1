"""A run directory and what is in it: the typed record of one work unit, ``results.jsonl`` (one record
per line, appended and flushed as each unit finishes), per-process shards, ``run.json`` and the
lock. Every reader and writer of those files goes through here."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import IO

from harness.errors import HarnessError


@dataclass(frozen=True)
class WorkUnit:
    task: str
    problem_id: str
    decoder: str
    k: int
    temperature: float
    accept: str
    sample_idx: int

    @property
    def key(self) -> tuple:
        return record_key(asdict(self))


UNIT_FIELDS = tuple(f.name for f in fields(WorkUnit))


def record_key(record: dict) -> tuple:
    """A record's work unit: what --resume matches on."""
    return tuple(record[name] for name in UNIT_FIELDS)


@dataclass(frozen=True)
class Record(WorkUnit):
    """One line of results.jsonl: its work unit's fields, then what came of it. Fields a record written
    by an older version lacks read as None."""

    # the generation
    top_p: float | None = None
    completion: str | None = None
    stop_reason: str | None = None
    device: str | None = None
    token_ids: list[int] | None = None
    block_sizes: list[int] | None = None  # its decode passes' query lengths (the probe projection)
    configuration: str | None = None  # what the decoder ran on: cache, compilation (fair comparisons)
    # the verdict: passed is None when unscored (not executed, or its toolchain unavailable)
    passed: bool | None = None
    status: str | None = None
    verdict_detail: str | None = None
    isolation: str | None = None
    # the statistics (decoding.Stats.to_dict)
    new_tokens: int | None = None
    forward_passes: int | None = None
    prefill_passes: int | None = None
    loops: int | None = None
    drafted: int | None = None
    accepted: int | None = None
    accept_rate: float | None = None
    mean_accepted_length: float | None = None
    tokens_per_forward: float | None = None
    prefill_s: float | None = None
    decode_s: float | None = None
    decode_cpu_s: float | None = None  # process CPU time while decoding (a busy machine shows in it)
    tokens_per_s: float | None = None
    tokens_per_s_e2e: float | None = None
    peak_memory_bytes: int | None = None
    # greedy exactness against AR (harness.exactness)
    identical_to_ar: bool | None = None
    exactness: str | None = None
    first_divergence: int | None = None
    exactness_evidence: dict | None = None

    @classmethod
    def from_dict(cls, d: dict) -> Record:
        """Raises KeyError/TypeError on a line that is not a record (no work unit)."""
        known = {f.name for f in fields(cls)}
        record_key(d)
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


RECORD_FIELDS = tuple(f.name for f in fields(Record))


def _parse(line: str) -> dict | None:
    """A record as a dict with every field, or None for a line that is not one."""
    try:
        return Record.from_dict(json.loads(line)).to_dict()
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return None


def replace_atomically(path: Path, text: str) -> None:
    """``path`` now holds ``text``: written beside it and swapped in, so that a kill leaves the old file or
    the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class RunDirectory:
    """``--out``: results.jsonl (and shards of a distributed run), run.json and .lock."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.results = self.path / "results.jsonl"
        self.run_json = self.path / "run.json"

    def shard(self, index: int, count: int) -> Path:
        """The file a process appends to: results.jsonl alone, or its own shard."""
        return self.results if count == 1 else self.path / f"results.rank{index}.jsonl"

    def result_files(self) -> list[Path]:
        """The merged results and any per-process shards a distributed run left (killed before merging)."""
        return [self.results, *sorted(self.path.glob("results.rank*.jsonl"))]

    def has_results(self) -> bool:
        return any(f.exists() and f.stat().st_size for f in self.result_files())

    # ---- checks before a run ------------------------------------------------------------------

    def ensure_writable(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise HarnessError(f"output directory '{self.path}' is not writable ({exc.strerror})") from None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """An exclusive lock for the whole run: a second run (or score) on the same --out stops at once."""
        fd = os.open(self.path / ".lock", os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise HarnessError(
                f"{self.path} is in use by another run ({holder}); wait for it or choose another --out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def prepare(self, identity: dict, defaults: dict, resume: bool) -> list[dict]:
        """Before a run: refuse existing results without --resume; with it, check the configuration
        (``identity``; a setting absent from run.json ran with its value in ``defaults``), drop a
        record cut by a kill mid-write from the end of each file (its unit runs again) and return the
        records already there."""
        files = [f for f in self.result_files() if f.exists() and f.stat().st_size > 0]
        if not resume:
            if files:
                raise HarnessError(
                    f"{files[0]} already has results: pass --resume to continue it, or choose another --out"
                )
            return []
        if not files:
            return []  # a start that failed before its first record: nothing to be consistent with
        if not self.run_json.exists():
            raise HarnessError(
                f"--resume: {files[0]} has results but {self.run_json} is missing, so their configuration "
                "cannot be checked: restore it, or move the results away"
            )
        written = {**defaults, **self.info().get("config", {})}
        if written != identity:
            diff = sorted(k for k in set(written) | set(identity) if written.get(k) != identity.get(k))
            raise HarnessError(
                f"--resume: {self.results} comes from another configuration (differs in {', '.join(diff)})"
            )
        return [record for path in files for record in self._repaired(path)]

    def _repaired(self, path: Path) -> list[dict]:
        lines = path.read_text().splitlines()
        kept = []
        for n, line in enumerate(lines, start=1):
            record = _parse(line)
            if record is not None:
                kept.append(record)
            elif n != len(lines):
                raise HarnessError(f"{path}:{n}: malformed record")
        if len(kept) != len(lines):
            self.rewrite(kept, path)
        return kept

    def remove_if_unused(self) -> None:
        """After a start that failed before its first record: leave no directory behind."""
        if self.has_results():
            return
        for name in (".lock", "run.json", "results.jsonl"):
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        with contextlib.suppress(OSError):
            self.path.rmdir()  # only if nothing else is in it

    # ---- writing ------------------------------------------------------------------------------

    @staticmethod
    def append(f: IO[str], record: Record, path: Path) -> None:
        """One record, flushed; a full disk is one line naming the file (earlier records stay intact)."""
        try:
            f.write(json.dumps(record.to_dict()) + "\n")
            f.flush()
        except OSError as exc:
            raise HarnessError(
                f"cannot write {path} ({exc.strerror}): the records before this one are saved; "
                "free space and run again with --resume"
            ) from None

    def rewrite(self, records: list[dict], path: Path | None = None) -> None:
        """Replace a results file atomically: a kill leaves the old file or the new one, never half."""
        replace_atomically(path or self.results, "".join(json.dumps(r) + "\n" for r in records))

    def merge(self, order: list[tuple]) -> None:
        """One results.jsonl in plan order (``order``: the units' keys, as a single process writes
        them), the first record of each unit kept, shards removed."""
        shards = self.result_files()[1:]
        if not shards:
            return
        position = {key: i for i, key in enumerate(order)}
        by_key: dict = {}
        for record in self.read():
            by_key.setdefault(record_key(record), record)
        self.rewrite(sorted(by_key.values(), key=lambda r: position.get(record_key(r), len(position))))
        for shard in shards:
            shard.unlink()

    def write_info(self, config: dict, facts: dict, allow_code_execution: bool, isolation: str | None) -> None:
        """run.json: this start's configuration and machine; a resumed run keeps what its earlier starts
        did (code executed in any start stays recorded) and lists every start."""
        this = {"allow_code_execution": allow_code_execution, "isolation": isolation}
        starts = [*self.info().get("starts", []), this]
        info = {
            "config": config,
            **facts,
            "allow_code_execution": any(s["allow_code_execution"] for s in starts),
            "isolation": sorted({s["isolation"] for s in starts if s["isolation"]}) or None,
            "starts": starts,
        }
        self.run_json.write_text(json.dumps(info, indent=1))

    # ---- reading ------------------------------------------------------------------------------

    def info(self) -> dict:
        """run.json ({} where there is none)."""
        if not self.run_json.exists():
            return {}
        try:
            return json.loads(self.run_json.read_text())
        except json.JSONDecodeError:
            raise HarnessError(f"{self.run_json}: not valid JSON") from None

    def read(self) -> list[dict]:
        """Every record of the merged file and the shards (as a process that joins a run sees them)."""
        records = []
        for path in self.result_files():
            if path.exists():
                records += self._records(path)
        return records

    def load(self) -> tuple[list[dict], dict]:
        """A finished run's records and run.json, for reports, gates and scoring; one line where they are
        missing or unreadable."""
        if not self.results.exists():
            raise HarnessError(f"{self.path}: no results.jsonl (not a run directory?)")
        records = self._records(self.results)
        if not records:
            raise HarnessError(f"{self.results}: no records")
        return records, self.info()

    @staticmethod
    def _records(path: Path) -> list[dict]:
        records = []
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            record = _parse(line)
            if record is None:
                raise HarnessError(f"{path}:{n}: malformed record")
            records.append(record)
        return records
