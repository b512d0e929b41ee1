"""The main job: work units (task x problem x decoder x k x sampling x sample) run one by one, each
result appended and flushed to ``results.jsonl`` as it finishes; ``--resume`` skips what is there."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from harness.errors import HarnessError

DECODERS_WITH_K = ("sdsat", "sdsat-fused")  # the others take no draft length (hf-pld: its default lookup length)
# A control, not a decoder: the dataset's reference solution scored as a completion through the same
# prompt, assembly and sandbox, so a scoring regression shows as its pass@1 falling below 1 (CI gates it).
REFERENCE = "reference"


@dataclass(frozen=True)
class RunConfig:
    model: str
    tasks: tuple[str, ...]
    decoders: tuple[str, ...] = ("ar", "sdsat")
    ks: tuple[int, ...] = (0, 1, 3, 5, 7)
    temperatures: tuple[float, ...] = (0.0,)
    top_p: float = 0.95
    top_k: int = 0
    accepts: tuple[str, ...] = ("exact",)
    n_samples: int = 1
    limit: int | None = None
    max_new_tokens: int = 256
    device: str = "cpu"
    dtype: str = "fp32"
    seed: int = 0
    data_dir: str | None = None
    adaptive_tokens: str | None = None
    draft_model: str | None = None  # hf-assisted's draft model
    groups: str = "all"  # sdsat-fused's group policy: all, or comma-separated acceptance lengths
    engine: str = "auto"  # ar/sdsat/sdsat-fused passes: auto (compile on CUDA, eager on CPU) | eager | static | compile
    attn_implementation: str = "sdpa"  # transformers' attention kernel: sdpa | eager
    fim_order: str = "psm"
    allow_code_execution: bool = False
    isolation: str | None = None  # the sandbox's level; None: the strongest namespace level available
    skip_unavailable: bool = False  # execute what can be, and leave tasks without a toolchain unscored

    def identity(self) -> dict:
        """What makes two runs' records comparable: everything but where the data lives and execution."""
        d = asdict(self)
        for key in ("data_dir", "allow_code_execution", "isolation", "skip_unavailable"):
            d.pop(key)
        return json.loads(json.dumps(d))


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


def _draft_lengths(decoder: str, ks: tuple[int, ...]) -> tuple[int, ...]:
    """sdsat runs k = 0 as plain AR through its own loop; sdsat-fused needs k >= 1; the others take no k."""
    if decoder == "sdsat":
        return ks
    if decoder in DECODERS_WITH_K:
        return tuple(k for k in ks if k > 0)
    return (0,)


def plan(cfg: RunConfig, problems: dict[str, list]) -> list[WorkUnit]:
    """AR (k=0) comes first for each problem so that later records can say whether they equal it."""
    units = []
    for task, probs in problems.items():
        for p in probs:
            for temp in cfg.temperatures:
                samples = cfg.n_samples if temp > 0 else 1
                for decoder in sorted(cfg.decoders, key=lambda d: d != "ar"):
                    if decoder == REFERENCE and (p.reference is None or temp > 0):
                        continue
                    ks = _draft_lengths(decoder, cfg.ks)
                    accepts = cfg.accepts if decoder in DECODERS_WITH_K and temp > 0 else ("-",)
                    for k in ks:
                        for accept in accepts:
                            for s in range(samples):
                                units.append(WorkUnit(task, p.problem_id, decoder, k, temp, accept, s))
    return units


def model_hash(path: str) -> str | None:
    """sha256 over the weight files of a local checkpoint (None for a hub id)."""
    root = Path(path)
    if not root.is_dir():
        return None
    h = hashlib.sha256()
    for f in sorted(root.glob("*.safetensors")) + sorted(root.glob("*.bin")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def machine() -> dict:
    import torch
    import transformers

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def _result_files(out: Path) -> list[Path]:
    """The merged results and any per-process shards a distributed run left (killed before merging)."""
    return [out / "results.jsonl", *sorted(out.glob("results.rank*.jsonl"))]


def _prepare_out(out: Path, cfg: RunConfig, resume: bool) -> list[dict]:
    """Check the output directory; with --resume, check the configuration, drop a record cut by a
    kill mid-write from the end of each results file (so that its unit runs again) and return the
    records already there."""
    files = [f for f in _result_files(out) if f.exists() and f.stat().st_size > 0]
    if not resume:
        if files:
            raise HarnessError(f"{files[0]} already has results: pass --resume to continue it, or choose another --out")
        return []
    run_json = out / "run.json"
    if not files:
        return []  # a start that failed before its first record: nothing to be consistent with
    if not run_json.exists():
        raise HarnessError(
            f"--resume: {files[0]} has results but {run_json} is missing, so their configuration "
            "cannot be checked: restore it, or move the results away"
        )
    # A run written before a setting existed ran with that setting's default.
    written = {
        **RunConfig(model=cfg.model, tasks=cfg.tasks).identity(),
        **json.loads(run_json.read_text()).get("config", {}),
    }
    current = cfg.identity()
    if written != current:
        diff = sorted(k for k in set(written) | set(current) if written.get(k) != current.get(k))
        raise HarnessError(
            f"--resume: {out / 'results.jsonl'} comes from another configuration (differs in {', '.join(diff)})"
        )
    previous = []
    for path in files:
        lines = path.read_text().splitlines()
        kept = []
        for n, line in enumerate(lines, start=1):
            record = _parse_record(line)
            if record is not None:
                kept.append(record)
            elif n != len(lines):
                raise HarnessError(f"{path}:{n}: malformed record")
        if len(kept) != len(lines):
            _write_records(path, kept)
        previous += kept
    return previous


def _write_records(path: Path, records: list[dict]) -> None:
    """Replace a results file atomically: a kill leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    os.replace(tmp, path)


def _read_records(out: Path) -> list[dict]:
    records = []
    for path in _result_files(out):
        if path.exists():
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return records


def _merge(out: Path, units: list[WorkUnit]) -> None:
    """One results.jsonl in plan order (as a single process writes it), shards removed."""
    shards = _result_files(out)[1:]
    if not shards:
        return
    order = {u.key: i for i, u in enumerate(units)}
    by_key: dict = {}
    for record in _read_records(out):
        by_key.setdefault(record_key(record), record)
    _write_records(out / "results.jsonl", sorted(by_key.values(), key=lambda r: order.get(record_key(r), len(order))))
    for shard in shards:
        shard.unlink()


def _parse_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
        record_key(record)
        return record
    except (json.JSONDecodeError, KeyError, TypeError):
        return None


def _higher_precision(cfg: RunConfig, device):
    """The run's model in the precision that judges its greedy divergences (harness.exactness)."""
    from harness.exactness import HIGHER_PRECISION
    from harness.models import load_model

    higher = HIGHER_PRECISION[cfg.dtype]
    return load_model(cfg.model, device, higher, cfg.adaptive_tokens, cfg.attn_implementation).model


def reference_generation(problem):
    """The control's 'generation': the reference as the completion, no tokens, no timing."""
    from harness.decoding import Generation, Stats

    return Generation([], problem.reference, "reference", Stats(loops_observed=False))


def _write_run_json(out: Path, cfg: RunConfig, facts: dict, isolation: str | None) -> None:
    """run.json: this start's configuration and machine; a resumed run keeps what its earlier starts
    did (code executed in any start stays recorded) and lists every start."""
    path = out / "run.json"
    earlier = json.loads(path.read_text()) if path.exists() else {}
    this = {"allow_code_execution": cfg.allow_code_execution, "isolation": isolation}
    starts = [*earlier.get("starts", []), this]
    info = {
        "config": cfg.identity(),
        "data_dir": cfg.data_dir,
        **facts,
        "allow_code_execution": any(s["allow_code_execution"] for s in starts),
        "isolation": sorted({s["isolation"] for s in starts if s["isolation"]}) or None,
        "starts": starts,
    }
    path.write_text(json.dumps(info, indent=1))


def verdict_fields(verdict) -> dict:
    """A record's scoring: passed (None when unscored: not executed, or its toolchain unavailable),
    the status, why, and which sandbox judged it."""
    if verdict is None:
        return {"passed": None, "status": None, "verdict_detail": None, "isolation": None}
    passed = None if verdict.status == "unavailable" else verdict.status == "passed"
    return {
        "passed": passed,
        "status": verdict.status,
        "verdict_detail": verdict.detail,
        "isolation": verdict.isolation,
    }


def _writable_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise HarnessError(f"output directory '{out}' is not writable ({exc.strerror})") from None


def check_execution(cfg: RunConfig) -> str | None:
    """Before anything is generated: the sandbox level that will judge this run's programs (None when
    nothing is executed), and every toolchain its tasks need, unless --skip-unavailable."""
    from harness.execution.languages import get_language
    from harness.execution.sandbox import isolation_level
    from harness.tasks import get_task

    executed = [get_task(t) for t in cfg.tasks if get_task(t).scoring == "tests"]
    if not cfg.allow_code_execution or not executed:
        return None
    level = isolation_level(cfg.isolation)
    for task in executed:
        language = get_language(task.language)
        missing = language.missing()
        if missing and not cfg.skip_unavailable:
            raise HarnessError(
                f"task {task.name} needs {missing}, which is not installed ({language.install_hint}); "
                "pass --skip-unavailable to run it unscored"
            )
    return level


@contextlib.contextmanager
def run_lock(out: Path):
    """An exclusive lock on the run directory for the whole run: a second run on the same --out stops at once."""
    path = out / ".lock"
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise HarnessError(f"{out} is in use by another run ({holder}); wait for it or choose another --out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {platform.node()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _append(f, record: dict, path: Path) -> None:
    """One record, flushed to disk; a full disk is one line naming the file (earlier records stay intact)."""
    try:
        f.write(json.dumps(record) + "\n")
        f.flush()
    except OSError as exc:
        raise HarnessError(
            f"cannot write {path} ({exc.strerror}): the records before this one are saved; "
            "free space and run again with --resume"
        ) from None


def warm_up(lm, decoder, sampling) -> None:
    """Compile the decoder's block sizes (engine ``compile``) and, on a GPU, run one short untimed
    generation, so that kernel selection and the allocator warm up outside the timed records."""
    from harness.decoding import StopCondition
    from harness.models import encode_prompt

    lm.engine.warm_up(decoder.block_sizes(sampling.greedy))
    if lm.device.type == "cuda":
        decoder.generate(encode_prompt(lm.tokenizer, "def warm_up(x):"), StopCondition(16), sampling)


def run(cfg: RunConfig, out_dir: str, resume: bool = False, progress: bool = True) -> Path | None:
    """Run every work unit not yet in ``out_dir``. Under ``accelerate launch`` each process takes
    every N-th problem, appends to its own shard, and the main process merges the shards into
    results.jsonl; returns its path on the main process, None on the others."""
    from harness.distributed import current_shard
    from harness.tasks import get_task

    out = Path(out_dir)
    for task in cfg.tasks:
        get_task(task)  # unknown task: one-line error before anything is written
    isolation = check_execution(cfg)  # no sandbox or a missing toolchain: stop before generating
    shard = current_shard(cpu=cfg.device == "cpu")
    if not shard.is_main:
        shard.wait()  # the others read what the main process checked and repaired
        return _run_units(cfg, out, _read_records(out), shard, isolation, progress)
    created = not out.exists()
    _writable_dir(out)
    try:
        with run_lock(out):
            previous = _prepare_out(out, cfg, resume)
            shard.wait()
            return _run_units(cfg, out, previous, shard, isolation, progress)
    except BaseException:
        if created:
            _remove_if_unused(out)  # a start that failed before its first record leaves no directory behind
        raise


def _remove_if_unused(out: Path) -> None:
    if any(f.exists() and f.stat().st_size for f in _result_files(out)):
        return
    for name in (".lock", "run.json", "results.jsonl"):
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    with contextlib.suppress(OSError):
        out.rmdir()  # only if nothing else is in it


def _run_units(
    cfg: RunConfig, out: Path, previous: list[dict], shard, isolation: str | None, progress: bool
) -> Path | None:
    """Load the model, plan this process's units, run those not in ``previous``, merge the shards."""
    from tqdm import tqdm

    from harness.decoding import SamplingParams
    from harness.exactness import GreedyComparison
    from harness.tasks import load_problems

    device = shard.device(cfg.device)
    lm, draft = _load_models(cfg, device)
    problems = {t: load_problems(t, cfg.data_dir, cfg.limit) for t in cfg.tasks}
    by_id = {(t, p.problem_id): p for t, ps in problems.items() for p in ps}
    mine = _my_problems(problems, shard)
    units = plan(cfg, problems)
    devices = shard.gather(f"{lm.device}" + (f" {torch_device_name(lm.device)}" if lm.device.type == "cuda" else ""))
    if shard.is_main:
        _write_run_json(out, cfg, _facts(cfg, lm, len(units), shard.count, devices), isolation)
    results = out / "results.jsonl" if shard.count == 1 else out / f"results.rank{shard.index}.jsonl"
    done = {record_key(r) for r in previous}
    greedy = GreedyComparison(lm.model, lambda: _higher_precision(cfg, device), previous)
    my_units = plan(cfg, mine)
    todo = [u for u in my_units if u.key not in done]
    decoders = _decoders(cfg, lm, draft, todo)
    prompts = _prompts(cfg, lm, mine)
    modes = {t <= 0 for t in cfg.temperatures}  # greedy and/or sampling
    blocks = [b for d in decoders.values() for g in modes for b in d.block_sizes(g)]
    # One static cache for the whole run: a later growth would recompile every compiled block size.
    lm.engine.reserve(max(map(len, prompts.values()), default=0) + cfg.max_new_tokens + max(blocks, default=1))
    warmed: set = set()
    desc = "sdsat-bench run" + (f" [process 0 of {shard.count}]" if shard.count > 1 else "")
    bar = tqdm(
        total=len(my_units),
        initial=len(my_units) - len(todo),
        desc=desc,
        unit="gen",
        disable=not progress or not shard.is_main,
        file=sys.stderr,
    )
    with open(results, "a") as f, bar:
        for unit in todo:
            decoder = decoders.get((unit.decoder, unit.k, unit.accept))
            if decoder is not None and (decoder, unit.temperature) not in warmed:  # outside the timed records
                warmed.add((decoder, unit.temperature))
                warm_up(lm, decoder, SamplingParams(unit.temperature, seed=0))
            problem = by_id[(unit.task, unit.problem_id)]
            record = _run_unit(cfg, lm, unit, problem, prompts[(unit.task, unit.problem_id)], decoder, greedy)
            _append(f, record, results)
            bar.update(1)
    shard.wait()
    if not shard.is_main:
        return None
    _merge(out, units)
    return out / "results.jsonl"


def _facts(cfg: RunConfig, lm, units: int, processes: int, devices: list) -> dict:
    """What run.json says of the model and the machines besides the configuration."""
    from harness.models import resolve_model_path

    path = resolve_model_path(cfg.model)
    return {
        "model_path": path,
        "model_sha256": model_hash(path),
        "machine": machine(),
        "units": units,
        "processes": processes,
        "process_devices": devices,
        "engine": lm.engine.mode,
    }  # what auto chose


def _load_models(cfg: RunConfig, device: str):
    """The model (with its engine) and the hf-assisted draft model, checked against the run's decoders."""
    from harness.models import load_model

    lm = load_model(cfg.model, device, cfg.dtype, cfg.adaptive_tokens, cfg.attn_implementation, cfg.engine)
    draft = None
    if cfg.draft_model:
        draft = load_model(cfg.draft_model, device, cfg.dtype, attn_implementation=cfg.attn_implementation)
    if "hf-assisted" in cfg.decoders and draft is None:
        raise HarnessError("decoder 'hf-assisted' needs a draft model: pass --draft-model (e.g. default-draft)")
    if any(d in DECODERS_WITH_K for d in cfg.decoders):
        for k in cfg.ks:
            if k > 0:
                lm.require_adaptive(k)
    return lm, draft


def _my_problems(problems: dict[str, list], shard) -> dict[str, list]:
    """This process's share: every N-th problem in plan order (all units of a problem stay together)."""
    numbered = [(t, p) for t, ps in problems.items() for p in ps]
    mine: dict[str, list] = {t: [] for t in problems}
    for n, (t, p) in enumerate(numbered):
        if shard.owns(n):
            mine[t].append(p)
    return mine


def _decoders(cfg: RunConfig, lm, draft, todo: list[WorkUnit]) -> dict:
    from harness.decoding import make_decoder

    decoders: dict = {}
    for unit in todo:
        dkey = (unit.decoder, unit.k, unit.accept)
        if dkey not in decoders and unit.decoder != REFERENCE:
            accept = "exact" if unit.accept == "-" else unit.accept
            decoders[dkey] = make_decoder(unit.decoder, lm, k=unit.k, accept=accept, draft=draft, groups=cfg.groups)
    return decoders


def _prompts(cfg: RunConfig, lm, mine: dict[str, list]) -> dict[tuple[str, str], list[int]]:
    from harness.models import encode_prompt
    from harness.tasks import build_prompt

    # completion prompts come without trailing whitespace (tasks._completion_prompt)
    return {
        (t, p.problem_id): encode_prompt(lm.tokenizer, build_prompt(p, lm.fim, cfg.fim_order))
        for t, ps in mine.items()
        for p in ps
    }


def _run_unit(cfg: RunConfig, lm, unit: WorkUnit, problem, ids: list[int], decoder, greedy) -> dict:
    """One generation (or the reference control), its verdict and exactness, as one record."""
    from harness.decoding import SamplingParams, StopCondition
    from harness.scoring import judge
    from harness.tasks import get_task, stop_token_ids

    stop = StopCondition(
        cfg.max_new_tokens, problem.stop, stop_token_ids(problem, lm.tokenizer, lm.fim, lm.eos_token_ids)
    )
    seed = int(hashlib.sha256(repr((cfg.seed, *unit.key)).encode()).hexdigest()[:8], 16)
    sampling = SamplingParams(unit.temperature, cfg.top_p if unit.temperature > 0 else 1.0, cfg.top_k, seed)
    gen = reference_generation(problem) if decoder is None else decoder.generate(ids, stop, sampling)
    verdict = None
    if get_task(unit.task).scoring == "exact-match" or cfg.allow_code_execution:  # exact match executes nothing
        verdict = judge(problem, gen.text, isolation=cfg.isolation)
    return {
        **asdict(unit),
        "top_p": sampling.top_p,
        "completion": gen.text,
        **verdict_fields(verdict),
        **gen.stats.to_dict(per_loop=False),  # every statistic the README lists
        "stop_reason": gen.stop_reason,
        "device": str(lm.device),
        "token_ids": list(gen.tokens),
        # the query lengths of its decode passes (the projection onto a probe's cost curve)
        "block_sizes": None if decoder is None else list(decoder.block_sizes(unit.temperature <= 0)) or None,
        **greedy.fields(unit, gen, ids, stop.eos_token_ids, control=decoder is None),
    }


def torch_device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device)


def score(
    out_dir: str, workers: int, data_dir: str | None = None, progress: bool = True, isolation: str | None = None
) -> int:
    """Execute the completions of records that were written without execution (a GPU run without
    --allow-code-execution, say) and rewrite ``results.jsonl`` atomically; returns how many were scored."""
    from harness.report import load_run

    out = Path(out_dir)
    with run_lock(out):
        records, info = load_run(out)
        return _score_records(out, records, info, workers, data_dir, progress, isolation)


def _score_records(
    out: Path,
    records: list[dict],
    info: dict,
    workers: int,
    data_dir: str | None,
    progress: bool,
    isolation: str | None,
) -> int:
    from tqdm import tqdm

    from harness.execution.sandbox import isolation_level
    from harness.scoring import judge_many
    from harness.tasks import load_problems

    isolation_level(isolation)  # no sandbox: one line before anything runs
    todo = [r for r in records if r.get("passed") is None]
    if data_dir is None and info.get("data_dir") and Path(info["data_dir"]).is_dir():
        data_dir = info["data_dir"]  # else $SDSAT_DATA_DIR, as everywhere
    problems = {}
    for task in sorted({r["task"] for r in todo}):
        for p in load_problems(task, data_dir, None):
            problems[(task, p.problem_id)] = p
    with tqdm(total=len(todo), desc="sdsat-bench score", unit="prog", disable=not progress, file=sys.stderr) as bar:
        verdicts = judge_many(
            [(problems[(r["task"], r["problem_id"])], r["completion"]) for r in todo],
            workers,
            progress=bar.update,
            isolation=isolation,
        )
    for record, verdict in zip(todo, verdicts, strict=True):
        record.update(verdict_fields(verdict))
    _write_records(out / "results.jsonl", records)
    return len(todo)
