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


def test_report_compares_runs_with_deltas(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(run_dir, other)
    records = [json.loads(line) for line in (other / "results.jsonl").read_text().splitlines()]
    for r in records:
        r["forward_passes"] *= 2  # a doctored run: half the tokens per forward pass
    (other / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["report", str(run_dir), str(other), "--out", str(tmp_path / "cmp")]) == 0
    import pandas as pd

    cmp = pd.read_csv(tmp_path / "cmp" / "comparison.csv")
    assert set(cmp.run) == {"run", "other"}
    mine, theirs = cmp[cmp.run == "run"], cmp[cmp.run == "other"]
    assert (mine["Δ tokens_per_forward"] == 0).all()
    assert theirs["tokens_per_forward"].values == pytest.approx(mine["tokens_per_forward"].values / 2)
    assert (theirs["Δ tokens_per_forward"] < 0).all()
    assert (tmp_path / "cmp" / "report.html").exists()


def test_check_passes_on_its_baseline_and_fails_on_a_regression(run_dir, tmp_path, capsys):
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
