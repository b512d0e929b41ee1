"""The main job, as a story: check what can be checked before a model loads; lock and prepare the run
directory; set up the workbench; run this process's units one by one, each record appended and
flushed as it finishes (``--resume`` skips what is there); merge the shards. ``score`` judges, later,
the records a run wrote without executing code."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from harness.config import RunConfig
from harness.planning import my_problems, plan
from harness.results import Record, RunDirectory, WorkUnit, record_key

__all__ = ["RunConfig", "run", "score"]


def run(cfg: RunConfig, out_dir: str, resume: bool = False, progress: bool = True) -> Path | None:
    """Run every work unit not yet in ``out_dir``. Under ``accelerate launch`` each process takes
    every N-th problem, appends to its own shard, and the main process merges the shards into
    results.jsonl; returns its path on the main process, None on the others."""
    from harness.distributed import current_shard
    from harness.scoring import check_execution
    from harness.tasks import get_task

    for task in cfg.tasks:
        get_task(task)  # unknown task: one-line error before anything is written
    isolation = check_execution(cfg)  # no sandbox or a missing toolchain: stop before generating
    out = RunDirectory(out_dir)
    shard = current_shard(cpu=cfg.device == "cpu")
    if not shard.is_main:
        shard.wait()  # the others read what the main process checked and repaired
        return _run_units(cfg, out, out.read(), shard, isolation, progress)
    created = not out.path.exists()
    out.ensure_writable()
    try:
        with out.lock():
            previous = out.prepare(cfg.identity(), RunConfig.default_identity(cfg.model, cfg.tasks), resume)
            shard.wait()
            return _run_units(cfg, out, previous, shard, isolation, progress)
    except BaseException:
        if created:
            out.remove_if_unused()  # a start that failed before its first record leaves no directory behind
        raise


def _run_units(
    cfg: RunConfig, out: RunDirectory, previous: list[dict], shard, isolation: str | None, progress: bool
) -> Path | None:
    """Plan, set up the workbench, run this process's units not in ``previous``, merge the shards."""
    from harness.exactness import GreedyComparison
    from harness.provenance import device_name
    from harness.tasks import load_problems
    from harness.workbench import Workbench

    problems = {t: load_problems(t, cfg.data_dir, cfg.limit) for t in cfg.tasks}
    mine = my_problems(problems, shard)
    done = {record_key(r) for r in previous}
    my_units = plan(cfg, mine)
    todo = [u for u in my_units if u.key not in done]
    bench = Workbench.for_run(cfg, shard.device(cfg.device), todo, mine)
    units = plan(cfg, problems)
    devices = shard.gather(device_name(bench.lm.device))
    if shard.is_main:
        facts = _facts(cfg, bench, len(units), shard.count, devices)
        out.write_info(cfg.identity(), facts, cfg.allow_code_execution, isolation)
    greedy = GreedyComparison(bench.lm.model, bench.higher_precision, previous)
    by_id = {(t, p.problem_id): p for t, ps in mine.items() for p in ps}
    results = out.shard(shard.index, shard.count)
    with open(results, "a") as f, _progress_bar(shard, len(my_units), len(todo), progress) as bar:
        for unit in todo:
            record = _run_unit(cfg, bench, unit, by_id[(unit.task, unit.problem_id)], greedy)
            out.append(f, record, results)
            bar.update(1)
    shard.wait()
    if not shard.is_main:
        return None
    out.merge([u.key for u in units])
    return out.results


def _progress_bar(shard, units: int, todo: int, progress: bool):
    from tqdm import tqdm

    desc = "sdsat-bench run" + (f" [process 0 of {shard.count}]" if shard.count > 1 else "")
    disable = not progress or not shard.is_main
    return tqdm(total=units, initial=units - todo, desc=desc, unit="gen", disable=disable, file=sys.stderr)


def _facts(cfg: RunConfig, bench, units: int, processes: int, devices: list) -> dict:
    """What run.json says of the data, the model and the machines besides the configuration."""
    from harness import weights
    from harness.decoding import reads_draft_model
    from harness.decoding.features import read_drafter_config
    from harness.provenance import machine
    from harness.training import DRAFTERS

    source = weights.resolve(cfg.model)
    drafter = {}
    readers = [d for d in cfg.decoders if d in DRAFTERS]
    if cfg.drafter is not None and readers:  # the trained drafters the run read: their weights, as the model's
        drafter = {"drafter_path": str(weights.resolve_drafter(cfg.drafter))}
        drafter["drafter_sha256"] = {d: weights.dir_sha256(read_drafter_config(cfg.drafter, d)[0]) for d in readers}
    if cfg.draft_model and reads_draft_model(cfg.decoders):  # what load_models loaded
        draft = weights.resolve(cfg.draft_model)
        drafter.update(draft_model_path=draft.path, draft_model_sha256=weights.fingerprint(draft))
    return {
        "data_dir": cfg.data_dir,
        "model_path": source.path,
        "model_sha256": weights.fingerprint(source),
        **drafter,
        "machine": machine(),
        "units": units,
        "processes": processes,
        "process_devices": devices,
        "engine": bench.lm.engine.mode,  # what auto chose
    }


def _run_unit(cfg: RunConfig, bench, unit: WorkUnit, problem, greedy) -> Record:
    """One generation (or the reference control), its verdict and exactness, as one record."""
    from harness.decoding import SamplingParams, configuration
    from harness.scoring import judge, verdict_fields

    decoder = bench.decoder(unit)
    ids = bench.prompts[(unit.task, unit.problem_id)]
    stop = bench.stop(problem)
    seed = int(hashlib.sha256(repr((cfg.seed, *unit.key)).encode()).hexdigest()[:8], 16)
    sampling = SamplingParams(unit.temperature, cfg.top_p if unit.temperature > 0 else 1.0, cfg.top_k, seed)
    gen = bench.generate(decoder, problem, ids, stop, sampling)
    verdict = None
    if problem.scoring == "exact-match" or cfg.allow_code_execution:  # exact match executes nothing
        verdict = judge(problem, gen.text, isolation=cfg.isolation)
    return Record(
        **unit.__dict__,
        top_p=sampling.top_p,
        completion=gen.text,
        stop_reason=gen.stop_reason,
        device=str(bench.lm.device),
        token_ids=list(gen.tokens),
        block_sizes=None if decoder is None else list(decoder.block_sizes(unit.temperature <= 0)) or None,
        configuration=None if decoder is None else configuration(decoder, bench.lm, unit.temperature <= 0),
        **verdict_fields(verdict),
        **gen.stats.to_dict(),
        **greedy.fields(unit, gen, ids, stop.eos_token_ids, control=decoder is None),
    )


def score(
    out_dir: str, workers: int, data_dir: str | None = None, progress: bool = True, isolation: str | None = None
) -> int:
    """Execute the completions of records that were written without execution (a GPU run without
    --allow-code-execution, say) and rewrite ``results.jsonl`` atomically; returns how many were scored."""
    from tqdm import tqdm

    from harness.execution.sandbox import isolation_level
    from harness.scoring import judge_many, verdict_fields
    from harness.tasks import load_problems

    out = RunDirectory(out_dir)
    with out.lock():
        records, info = out.load()
        isolation_level(isolation)  # no sandbox: one line before anything runs
        todo = [r for r in records if r.get("passed") is None]
        if data_dir is None and info.get("data_dir") and Path(info["data_dir"]).is_dir():
            data_dir = info["data_dir"]  # else $SDSAT_DATA_DIR, as everywhere
        problems = {}
        for task in sorted({r["task"] for r in todo}):
            problems |= {(task, p.problem_id): p for p in load_problems(task, data_dir, None)}
        pairs = [(problems[(r["task"], r["problem_id"])], r["completion"]) for r in todo]
        with tqdm(total=len(todo), desc="sdsat-bench score", unit="prog", disable=not progress, file=sys.stderr) as bar:
            verdicts = judge_many(pairs, workers, progress=bar.update, isolation=isolation)
        for record, verdict in zip(todo, verdicts, strict=True):
            record.update(verdict_fields(verdict))
        out.rewrite(records)
        return len(todo)
