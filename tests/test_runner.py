"""The main job: streaming records, resume after a kill, bad input, summaries from records alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.metrics import paired_speedup, summarize, wilson_interval

RUN = ["--tasks", "humaneval", "--decoders", "ar,sdsat", "--k", "1,2", "--limit", "3", "--max-new-tokens", "6"]


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _keys(records):
    return [
        (r["task"], r["problem_id"], r["decoder"], r["k"], r["temperature"], r["accept"], r["sample_idx"])
        for r in records
    ]


def test_run_writes_records_and_summary(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]) == 0
    records = _records(out)
    assert len(records) == 9 and len(set(_keys(records))) == 9  # 3 problems x (ar + sdsat k=1,2)
    assert all(r["identical_to_ar"] for r in records)  # greedy SDSAT is lossless
    assert all(r["passed"] is None for r in records)  # no execution without the opt-in
    printed = capsys.readouterr().out
    assert "9 records have no verdict (generated without --allow-code-execution)" in printed
    assert f"judge them with sdsat-bench score {out} --allow-code-execution" in printed
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["model_sha256"] and run_json["machine"]["torch"] and run_json["units"] == 9
    assert (out / "summary.csv").exists() and (out / "summary.md").exists()


def test_every_decoder_runs_in_one_run(tmp_path, tiny_checkpoint, capsys):
    """Each decoder of the registry beside the others in one run (their engines reserved and warmed
    up together: transformers' peers run no block of ours, sps brings a draft model, medusa heads and
    an eagle layer read hidden states, from one --drafter directory), every greedy record identical to AR's.
    Medusa's two heads reach k=2, not 3: it runs at the k of the grid within its reach, the others at all."""
    from harness.models import load_model
    from tests.tiny import eagle_drafter, medusa_drafter

    lm = load_model(str(tiny_checkpoint))
    drafter = str(tmp_path / "drafters")
    medusa_drafter(lm, tmp_path / "drafters" / "medusa", heads=2)
    eagle_drafter(lm, tmp_path / "drafters" / "eagle", std=0.1)
    decoders = "ar,sdsat,sdsat-fused,pld,lookahead,sps,medusa,eagle,hf,hf-pld,hf-assisted"
    args = ["--tasks", "humaneval", "--decoders", decoders, "--k", "2,3", "--limit", "2", "--max-new-tokens", "6"]
    extra = ["--draft-model", str(tiny_checkpoint), "--drafter", drafter, "--window", "3", "--guesses", "2"]
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_checkpoint), *args, *extra, "--out", str(out)]) == 0
    records = _records(out)
    assert {r["decoder"] for r in records} == set(decoders.split(","))
    assert all(r["identical_to_ar"] for r in records if r["decoder"] != "ar")
    assert {r["k"] for r in records if r["decoder"] == "medusa"} == {2}
    assert {r["k"] for r in records if r["decoder"] == "eagle"} == {2, 3}
    facts = json.loads((out / "run.json").read_text())  # the drafters' weights are fingerprinted, as the model's
    assert set(facts["drafter_sha256"]) == {"medusa", "eagle"} and facts["drafter_path"] == drafter
    assert facts["draft_model_path"] == str(tiny_checkpoint) and facts["draft_model_sha256"] == facts["model_sha256"]
    assert "'medusa' runs at k=2; k=3 is beyond its drafter (k <= 2)" in capsys.readouterr().err
    beyond = ["--tasks", "humaneval", "--decoders", "ar,medusa", "--k", "3", "--limit", "1", "--drafter", drafter]
    assert main(["run", "--model", str(tiny_checkpoint), *beyond, "--out", str(tmp_path / "beyond")]) == 2
    assert "'medusa': k=3 is beyond its drafter (k <= 2)" in capsys.readouterr().err


def test_a_draft_model_is_loaded_only_for_the_decoders_that_draft_with_it(tmp_path, tiny_checkpoint, capsys):
    """A suite names a draft model for its sps row; a run of that suite without sps (a model whose
    tokenizer no draft model shares) neither loads nor needs it."""
    missing = str(tmp_path / "no-such-draft")
    args = ["--tasks", "humaneval", "--decoders", "ar,pld", "--k", "2", "--limit", "1", "--max-new-tokens", "4"]
    out = tmp_path / "a"
    assert main(["run", "--model", str(tiny_checkpoint), *args, "--draft-model", missing, "--out", str(out)]) == 0
    assert "draft_model_sha256" not in json.loads((out / "run.json").read_text())  # not read, so not fingerprinted
    with_sps = ["--decoders", "ar,sps", "--draft-model", missing, "--out", str(tmp_path / "b")]
    assert main(["run", "--model", str(tiny_checkpoint), *args[:2], *args[4:], *with_sps]) == 2
    assert "no-such-draft" in capsys.readouterr().err


def test_resume_after_kill_loses_nothing_and_duplicates_nothing(tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "harness.cli",
        "run",
        "--model",
        str(tiny_checkpoint),
        "--tasks",
        "humaneval",
        "--decoders",
        "ar,sdsat",
        "--k",
        "1,2,3",
        "--limit",
        "8",
        "--max-new-tokens",
        "24",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results = out / "results.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and (not results.exists() or len(results.read_text().splitlines()) < 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [line for line in results.read_text().splitlines() if line.strip()]
    assert 5 <= len(before) < 32
    assert subprocess.run([*cmd, "--resume"], capture_output=True, timeout=600).returncode == 0
    after = _records(out)
    assert len(after) == 32 and len(set(_keys(after))) == 32
    complete_before = [json.loads(line) for line in before if line.endswith("}")]
    assert after[: len(complete_before)] == complete_before  # earlier records kept as written


def test_resume_with_another_config_is_refused(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]) == 0
    capsys.readouterr()
    changed = [a if a != "1,2" else "1,3" for a in RUN]
    assert main(["run", "--model", str(tiny_checkpoint), *changed, "--out", str(out), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another configuration" in err and "ks" in err
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]) == 2  # no silent overwrite
    assert "--resume" in capsys.readouterr().err


def test_resume_accepts_a_run_written_before_a_setting_existed(tmp_path, tiny_checkpoint):
    """A run.json without a later setting (here: engine) ran with its default, so --resume continues it."""
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]) == 0
    run_json = json.loads((out / "run.json").read_text())
    del run_json["config"]["engine"]
    (out / "run.json").write_text(json.dumps(run_json))
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out), "--resume"]) == 0
    assert (
        main(["run", "--model", str(tiny_checkpoint), *RUN, "--engine", "static", "--out", str(out), "--resume"]) == 2
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--k", "9"], "beyond the model's 4 adaptive tokens"),
        (["--decoders", "ar,beam"], "unknown decoder 'beam'"),
    ],
)
def test_bad_run_input_is_one_line(capsys, tmp_path, tiny_checkpoint, args, message):
    base = {"--tasks": "humaneval", "--k": "1", "--decoders": "ar,sdsat"}
    base.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["run", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--limit", "1"]
    for flag, value in base.items():
        argv += [flag, value]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_unwritable_out_dir_is_one_line(capsys, tmp_path, tiny_checkpoint):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_paired_speedup_and_pass_at_k_from_records():
    s = paired_speedup(list(np.log([2.0] * 5)))
    assert s["speedup"] == pytest.approx(2.0) and s["speedup_lo"] == pytest.approx(2.0)
    s = paired_speedup(list(np.log([1.0, 4.0, 1.0, 4.0, 2.0])))
    assert s["speedup"] == pytest.approx(2.0) and s["speedup_lo"] < 2.0 < s["speedup_hi"]
    # Two problems say nothing about spread: a point estimate, no interval (it spanned 1e-9..7e9)
    s = paired_speedup(list(np.log([1e-4, 1e4])))
    assert s["speedup"] == pytest.approx(1.0) and s["speedup_lo"] is None and s["speedup_hi"] is None
    base = {
        "task": "t",
        "k": 0,
        "temperature": 0.8,
        "top_p": 0.95,
        "accept": "-",
        "drafted": 0,
        "accepted": 0,
        "loops": 4,
        "new_tokens": 4,
        "forward_passes": 4,
        "decode_s": 1.0,
        "accept_rate": None,
        "identical_to_ar": None,
    }
    records = [
        {**base, "decoder": "ar", "problem_id": p, "sample_idx": i, "passed": ok, "tokens_per_s": 4.0}
        for p, oks in (("a", [1, 0]), ("b", [0, 0]))
        for i, ok in enumerate(oks)
    ]
    row = summarize(records).iloc[0]
    assert row["pass@1"] == pytest.approx(0.25) and row["speedup"] == pytest.approx(1.0)
    assert "pass@1_lo" not in row  # two problems: no interval


def test_wilson_interval_stays_in_the_unit_interval():
    assert wilson_interval(0, 164)[0] == 0.0 and 0.0 < wilson_interval(0, 164)[1] < 0.03
    lo, hi = wilson_interval(10, 164)  # SmolLM2's greedy HumanEval pass@1
    assert lo == pytest.approx(0.0335, abs=1e-3) and hi == pytest.approx(0.1084, abs=1e-3)
    assert wilson_interval(164, 164)[1] == pytest.approx(1.0) and wilson_interval(164, 164)[0] > 0.97


def test_exact_match_tasks_are_scored_without_execution(capsys, tmp_path, tiny_checkpoint):
    from tests.test_tasks import REPO

    data = os.environ.get("SDSAT_DATA_DIR") or str(REPO.parent / "shared" / "data")
    if not os.path.isdir(data):
        pytest.skip("no evaluation data directory")
    out = tmp_path / "run"
    argv = [
        "run",
        "--model",
        str(tiny_checkpoint),
        "--tasks",
        "humaneval,santacoder-fim-py",
        "--decoders",
        "ar",
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--data-dir",
        data,
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    records = _records(out)
    assert [r["passed"] is None for r in records] == [True, True, False, False]


def test_suite_settings_and_flag_overrides(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "smoke"
    # smoke suite without a data dir: HumanEval only; its k = 3,5,7 is overridden here (the model has 4)
    argv = [
        "run",
        "--model",
        str(tiny_checkpoint),
        "--suite",
        "smoke",
        "--k",
        "2",
        "--limit",
        "2",
        "--max-new-tokens",
        "4",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    records = _records(out)
    assert {r["task"] for r in records} == {"humaneval"} and {(r["decoder"], r["k"]) for r in records} == {
        ("ar", 0),
        ("sdsat", 2),
        ("sdsat-fused", 2),
        ("reference", 0),  # the scoring control
    }
    assert json.loads((out / "run.json").read_text())["config"]["max_new_tokens"] == 4
    capsys.readouterr()
    assert main(["run", "--model", str(tiny_checkpoint), "--suite", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err


def test_a_second_run_on_the_same_directory_stops_at_once(tmp_path):
    from harness.results import RunDirectory

    held = pytest.raises(HarnessError, match=rf"in use by another run \(pid {os.getpid()} on ")
    out = RunDirectory(tmp_path)
    with out.lock(), held, RunDirectory(tmp_path).lock():
        pass
    with out.lock():  # released with the run
        pass


def test_a_full_disk_is_one_line_naming_the_file(tmp_path):
    import errno

    from harness.results import Record, RunDirectory

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

    with pytest.raises(HarnessError, match=r"cannot write .*results.jsonl \(No space left on device\).*--resume"):
        RunDirectory.append(FullDisk(), Record("humaneval", "p", "ar", 0, 0.0, "-", 0), tmp_path / "results.jsonl")


def test_resume_refuses_results_without_their_run_json(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]) == 0
    (out / "run.json").unlink()
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out), "--resume"]) == 2
    assert "run.json is missing" in capsys.readouterr().err.replace(str(out) + "/", "")
    assert len(_records(out)) == 9  # nothing appended


def test_a_failed_start_leaves_nothing_and_blocks_nothing(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    bad = [a if a != "1,2" else "1,9" for a in RUN]  # k = 9: beyond the tiny model's 4 adaptive tokens
    assert main(["run", "--model", str(tiny_checkpoint), *bad, "--out", str(out)]) == 2
    assert not out.exists()
    assert main(["run", "--model", "/no/such/model", *RUN, "--out", str(out)]) == 2
    assert not out.exists()
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"config": {"ks": [1, 9]}}))  # a failed start's run.json
    capsys.readouterr()
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out), "--resume"]) == 0


def test_resume_keeps_what_earlier_starts_did(tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    run = ["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]
    assert main([*run, "--allow-code-execution"]) == 0
    assert main([*run, "--resume"]) == 0  # resumed without execution: the executed verdicts stay recorded
    info = json.loads((out / "run.json").read_text())
    assert info["allow_code_execution"] is True
    assert [s["allow_code_execution"] for s in info["starts"]] == [True, False]


def test_check_names_absent_tasks_instead_of_calling_them_regressions(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]) == 0
    baseline = tmp_path / "baseline.json"
    assert main(["check", str(out), "--baseline", str(baseline), "--update-baseline"]) == 0
    data = json.loads(baseline.read_text())
    data["metrics"]["multiple-js/ar/k=0:tokens_per_forward"] = {"value": 1.0, "kind": "rel", "tolerance": 0.05}
    baseline.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["check", str(out), "--baseline", str(baseline)]) == 1
    text = capsys.readouterr().out
    assert "absent from this run" in text and "multiple-js" in text and "missing" not in text
    data["metrics"]["humaneval/ar/k=0:bogus"] = {"value": "x"}
    baseline.write_text(json.dumps(data))
    assert main(["check", str(out), "--baseline", str(baseline)]) == 2
    assert "malformed entry" in capsys.readouterr().err


def test_repeats_time_each_generation_and_keep_the_median(tmp_path, tiny_checkpoint, monkeypatch):
    """--repeats 3: every generation runs three times (same seed, same tokens) and its record keeps
    the median decode time; a value below 1 is refused before the model loads."""
    from harness.decoding.autoregressive import AutoregressiveDecoder

    calls = []
    original = AutoregressiveDecoder.generate

    def counted(self, *args, **kwargs):
        gen = original(self, *args, **kwargs)
        calls.append(gen.tokens)
        return gen

    monkeypatch.setattr(AutoregressiveDecoder, "generate", counted)
    out = tmp_path / "run"
    args = ["--tasks", "humaneval", "--decoders", "ar", "--limit", "2", "--max-new-tokens", "4", "--repeats", "3"]
    assert main(["run", "--model", str(tiny_checkpoint), *args, "--out", str(out)]) == 0
    timed = calls[-6:]  # after the warm-up: 2 problems x 3 repeats
    assert timed[0] == timed[1] == timed[2] and timed[3] == timed[4] == timed[5]
    assert json.loads((out / "run.json").read_text())["config"]["repeats"] == 3
    assert main(["run", "--model", "x", *args[:-1], "0", "--out", str(tmp_path / "y")]) == 2
