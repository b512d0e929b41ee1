"""Reports from results alone, run comparison, and the CI gate against a baseline."""

from __future__ import annotations

import json
import shutil

import pytest

from harness.cli import main

RUN = ["--tasks", "humaneval", "--decoders", "ar,sdsat", "--k", "1,2", "--limit", "3", "--max-new-tokens", "6"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]) == 0
    return out


def test_run_renders_a_self_contained_report(run_dir):
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3  # accept rate, tokens/s, tokens/forward vs k, speedup
    assert "<table" in page and 'src="http' not in page  # opens offline
    for name in ("summary.csv", "summary.md", "accept_rate_vs_k.png", "tokens_per_s_vs_k.png", "speedup.png"):
        assert (run_dir / name).exists(), name


def _doctored_copy(run_dir, dest, change):
    """A copy of the run whose every record went through ``change`` (a record -> the record it becomes)."""
    shutil.copytree(run_dir, dest)
    records = [json.loads(line) for line in (dest / "results.jsonl").read_text().splitlines()]
    (dest / "results.jsonl").write_text("".join(json.dumps(change(r)) + "\n" for r in records))
    return dest


def test_report_compares_runs_with_deltas(run_dir, tmp_path, capsys):
    # a doctored run: half the tokens per forward pass
    other = _doctored_copy(run_dir, tmp_path / "other", lambda r: {**r, "forward_passes": r["forward_passes"] * 2})
    assert main(["report", str(run_dir), str(other), "--out", str(tmp_path / "cmp")]) == 0
    import pandas as pd

    cmp = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert set(cmp.run) == {"run", "other"}
    mine, theirs = cmp[cmp.run == "run"], cmp[cmp.run == "other"]
    assert (mine["Δ tokens_per_forward"] == 0).all()
    assert theirs["tokens_per_forward"].values == pytest.approx(mine["tokens_per_forward"].values / 2)
    assert (theirs["Δ tokens_per_forward"] < 0).all()
    assert (tmp_path / "cmp" / "report.html").exists()
    stacked = pd.read_csv(tmp_path / "cmp" / "summary.csv")
    assert list(stacked.columns[:2]) == ["run", "model"] and len(stacked) == len(cmp)
    assert {"task", "decoder", "k", "speedup", "mean_accepted_length"} <= set(stacked.columns)


def test_check_passes_on_its_baseline_and_fails_on_a_regression(run_dir, tmp_path, capsys):
    # The run with its CPU times dropped: records without one are never noisy, so the pooled speedup is
    # gated whatever load the test machine had while the fixture ran.
    run_dir = _doctored_copy(run_dir, tmp_path / "quiet", lambda r: {k: v for k, v in r.items() if k != "decode_cpu_s"})
    baseline = tmp_path / "baseline.json"
    assert main(["check", str(run_dir), "--baseline", str(baseline), "--update-baseline"]) == 0
    assert main(["check", str(run_dir), "--baseline", str(baseline)]) == 0
    assert "FAIL" not in capsys.readouterr().out
    doctored = json.loads(baseline.read_text())
    key = next(k for k in doctored["metrics"] if k.endswith("sdsat/k=2:tokens_per_forward"))
    doctored["metrics"][key]["value"] *= 1.2  # the run now looks 17% worse than the baseline
    baseline.write_text(json.dumps(doctored))
    assert main(["check", str(run_dir), "--baseline", str(baseline)]) == 1
    out = capsys.readouterr().out
    assert f"FAIL  {key}" in out and "1 regressed" in out
    speed = next(k for k in doctored["metrics"] if k.startswith("all-tasks/sdsat/k=1:speedup"))
    assert doctored["metrics"][speed]["kind"] == "rel"


def test_check_and_report_bad_input_is_one_line(run_dir, tmp_path, capsys):
    assert main(["check", str(run_dir), "--baseline", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main(["check", str(run_dir), "--baseline", str(tmp_path / "bad.json")]) == 2
    assert main(["report", str(tmp_path)]) == 2
    assert "no results.jsonl" in capsys.readouterr().err
    assert main(["run", *RUN, "--out", str(tmp_path / "x")]) == 2
    assert "--model is required" in capsys.readouterr().err


def test_score_executes_saved_completions_later(tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "gpu-like"
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]) == 0
    assert main(["score", str(out)]) == 2  # executing needs the opt-in
    assert main(["score", str(out), "--allow-code-execution", "--workers", "2"]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(records) == 9 and all(r["passed"] is not None and r["status"] for r in records)
    assert "pass@1" in (out / "summary.csv").read_text()


def _speed_record(task: str, problem: int, decoder: str, tokens_per_s: float) -> dict:
    k = 0 if decoder == "ar" else 3
    return {
        "task": task,
        "problem_id": str(problem),
        "decoder": decoder,
        "k": k,
        "temperature": 0.0,
        "top_p": 1.0,
        "accept": "-",
        "sample_idx": 0,
        "tokens_per_s": tokens_per_s,
        "drafted": 0,
        "accepted": 0,
        "loops": 1,
        "new_tokens": 1,
        "forward_passes": 1,
        "decode_s": 1.0,
        "accept_rate": None,
        "identical_to_ar": True,
        "passed": None,
    }


def test_the_speed_gate_compares_the_tasks_both_runs_have(tmp_path):
    """A HumanEval-only run against a baseline pooled over two tasks: humaneval's share alone is
    compared, not the run's HumanEval against the two-task pool."""
    from harness.check import current_metrics, gate, speed_shares, write_baseline

    both = [
        _speed_record(t, p, d, s)
        for t, ratio in (("humaneval", 2.0), ("multiple-js", 1.0))
        for p in range(6)
        for d, s in (("ar", 10.0), ("sdsat", 10.0 * ratio))
    ]
    path = tmp_path / "baseline.json"
    write_baseline(path, current_metrics(both), None, {}, speed_shares(both))
    baseline = json.loads(path.read_text())
    metric = "all-tasks/sdsat/k=3:speedup"
    assert baseline["metrics"][metric]["value"] == pytest.approx(2**0.5)
    humaneval_only = [r for r in both if r["task"] == "humaneval"]
    [verdict] = [
        v for v in gate(baseline, current_metrics(humaneval_only), speed_shares(humaneval_only)) if v.metric == metric
    ]
    assert verdict.ok and verdict.baseline == pytest.approx(2.0) and verdict.value == pytest.approx(2.0)
    assert "over humaneval" in verdict.tolerance
    slower = [{**r, "tokens_per_s": 11.0} if r["decoder"] == "sdsat" else r for r in humaneval_only]
    [verdict] = [v for v in gate(baseline, current_metrics(slower), speed_shares(slower)) if v.metric == metric]
    assert not verdict.ok  # 1.1x against humaneval's 2.0x: a regression the pooled 1.41x would have hidden


def test_a_pooled_speedup_without_task_shares_is_not_compared_with_fewer_tasks():
    """A baseline made before task shares were kept pooled two tasks: a one-task run's pooled speedup
    cannot be set against it, and the gate says so instead of passing or failing it."""
    from harness.check import current_metrics, gate, speed_shares

    both = [
        _speed_record(t, p, d, s)
        for t, ratio in (("humaneval", 2.0), ("multiple-js", 1.0))
        for p in range(6)
        for d, s in (("ar", 10.0), ("sdsat", 10.0 * ratio))
    ]
    metric = "all-tasks/sdsat/k=3:speedup"
    source = {"config": {"tasks": ["humaneval", "multiple-js"]}}
    baseline = {"source": source, "metrics": {metric: {"value": 2**0.5, "kind": "rel", "tolerance": 0.3}}}
    humaneval_only = [r for r in both if r["task"] == "humaneval"]
    [verdict] = gate(baseline, current_metrics(humaneval_only), speed_shares(humaneval_only))
    assert verdict.ok and not verdict.comparable and "not comparable" in verdict.tolerance
    assert verdict.line().startswith("skip")
    [verdict] = gate(baseline, current_metrics(both), speed_shares(both))  # the same tasks: gated as ever
    assert verdict.ok and verdict.comparable and verdict.value == pytest.approx(2**0.5)


def test_check_and_report_call_a_cut_run_incomplete(run_dir, tmp_path, capsys):
    cut = tmp_path / "cut"
    shutil.copytree(run_dir, cut)
    lines = (cut / "results.jsonl").read_text().splitlines(keepends=True)
    (cut / "results.jsonl").write_text("".join(lines[:4]))
    baseline = tmp_path / "baseline.json"
    assert main(["check", str(run_dir), "--baseline", str(baseline), "--update-baseline"]) == 0
    capsys.readouterr()
    assert main(["check", str(cut), "--baseline", str(baseline)]) == 1
    assert "FAIL  incomplete run (4 of 9 units): finish it with run --resume" in capsys.readouterr().out
    assert main(["check", str(cut), "--baseline", str(tmp_path / "b2.json"), "--update-baseline"]) == 2
    assert "a baseline is made from a whole run" in capsys.readouterr().err
    assert main(["report", str(cut), "--out", str(tmp_path / "r")]) == 0
    assert "incomplete run (4 of 9 units)" in capsys.readouterr().err
    assert "incomplete run (4 of 9 units)" in (tmp_path / "r" / "report.html").read_text()


def test_noisy_records_leave_the_speed_gate_and_are_counted(tmp_path, capsys):
    """A problem timed while another process took the cores (less CPU time per wall second than the
    run's median) is left out of the pooled speedup, and the summary says how much of a row was noisy."""
    from harness.check import current_metrics, gate_run, write_baseline
    from harness.metrics import summarize

    quiet = [
        {**_speed_record("humaneval", p, d, s), "decode_cpu_s": 1.8}
        for p in range(6)
        for d, s in (("ar", 10.0), ("sdsat", 20.0))
    ]
    path = tmp_path / "baseline.json"
    write_baseline(path, current_metrics(quiet), None, {})
    baseline = json.loads(path.read_text())
    # problem 0's sdsat record was timed on a busy machine: half the speed, half the CPU time per second
    busy = [
        {**r, "tokens_per_s": 5.0, "decode_cpu_s": 0.9} if r["problem_id"] == "0" and r["decoder"] == "sdsat" else r
        for r in quiet
    ]
    row = summarize(busy).set_index("decoder").loc["sdsat"]
    assert row["noisy"] == pytest.approx(1 / 6)
    assert gate_run(baseline, current_metrics(busy), busy, {"units": len(busy), "data_dir": "d"}) == []
    assert "1 of 6 problems timed while the machine was busy" in capsys.readouterr().out
    every = [{**r, "decode_cpu_s": 0.9} if r["decoder"] == "sdsat" else r for r in quiet]
    failures = gate_run(baseline, current_metrics(every), every, {"units": len(every), "data_dir": "d"})
    assert len(failures) == 1 and failures[0].startswith("1 speedups not measured: every problem was noisy")


def test_a_run_that_shared_its_machine_throughout_is_named_so():
    from harness.check import busy_run

    info = {"config": {"device": "cpu"}, "machine": {"torch_threads": 2}}
    quiet = [{"decode_s": 1.0, "decode_cpu_s": 1.99}] * 5
    loaded = [{"decode_s": 1.0, "decode_cpu_s": 0.8}] * 5  # measured: two busy loops beside the smoke suite
    assert busy_run(quiet, info) is None
    assert "0.80 CPU-seconds per second of 2 threads" in busy_run(loaded, info)
    assert busy_run(loaded, {"config": {"device": "cuda"}, "machine": {"torch_threads": 16}}) is None
