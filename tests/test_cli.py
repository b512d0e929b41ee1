"""The decode command, and bad input: one line on stderr, non-zero exit, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.cli import main


def _run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_decode_prints_completion_then_stats(capsys, tiny_checkpoint):
    code, out, _ = _run(
        capsys,
        "decode",
        "--model",
        str(tiny_checkpoint),
        "--decoder",
        "sdsat",
        "--k",
        "3",
        "--prompt",
        "def f(a):",
        "--max-new-tokens",
        "12",
    )
    assert code == 0
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["decoder"] == "sdsat" and 1 <= stats["new_tokens"] <= 12
    assert stats["drafted"] >= stats["accepted"] >= 0


def test_decode_json_with_adaptive_tokens_flag(capsys, plain_checkpoint):
    code, out, _ = _run(
        capsys,
        "decode",
        "--model",
        str(plain_checkpoint),
        "--decoder",
        "sdsat",
        "--k",
        "2",
        "--adaptive-tokens",
        "7*2",
        "--temperature",
        "0.7",
        "--prompt",
        "abc",
        "--json",
    )
    assert code == 0
    record = json.loads(out)
    assert set(record) >= {"completion", "accept_rate", "tokens_per_forward", "prefill_s", "decode_s"}


@pytest.mark.parametrize("decoder", ["ar", "hf", "pld", "lookahead"])
def test_baselines_run_without_adaptive_tokens(capsys, plain_checkpoint, decoder):
    """Only the adaptive-token decoders need adaptive tokens: prompt lookup and lookahead draft from text."""
    code, out, _ = _run(
        capsys,
        "decode",
        "--model",
        str(plain_checkpoint),
        "--decoder",
        decoder,
        "--k",
        "3",
        "--prompt",
        "abcabc",
        "--max-new-tokens",
        "5",
        "--json",
    )
    assert code == 0
    if decoder == "lookahead":
        assert "lookahead W=7 N=4 G=7" in json.loads(out)["configuration"]


BAD_INPUT = [
    (["--model", "/no/such/model/dir"], "model directory not found"),
    (["--model", "{tiny}", "--k", "5"], "beyond the model's 4 adaptive tokens"),
    (["--model", "{plain}", "--k", "2"], "has no adaptive tokens"),
    (["--model", "{tiny}", "--prompt", ""], "empty prompt"),
    (["--model", "{tiny}", "--decoder", "beam"], "unknown decoder"),
    (["--model", "{plain}", "--adaptive-tokens", "7,x"], "--adaptive-tokens"),
    (["--model", "{plain}", "--adaptive-tokens", "99999"], "outside the vocabulary"),
    (["--model", "{tiny}", "--dtype", "fp8"], "--dtype"),
    (["--model", "{tiny}", "--accept", "maybe", "--temperature", "1"], "--accept"),
]


@pytest.mark.parametrize("args,message", BAD_INPUT)
def test_bad_input_is_one_line(capsys, tiny_checkpoint, plain_checkpoint, args, message):
    args = [a.format(tiny=tiny_checkpoint, plain=plain_checkpoint) for a in args]
    if "--prompt" not in args:
        args += ["--prompt", "abc"]
    code, _, err = _run(capsys, "decode", *args)
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err


def test_bad_input_from_the_console_has_no_traceback(tiny_checkpoint):
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "decode", "--model", str(tiny_checkpoint), "--k", "9", "--prompt", "x"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "beyond the model's 4 adaptive tokens" in proc.stderr


def test_missing_subcommand_argument_is_one_line(capsys):
    code, _, err = _run(capsys, "decode", "--prompt", "x")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "--model" in err


def test_decode_reports_k_only_where_a_decoder_takes_one_and_no_false_zeros(capsys, tiny_checkpoint):
    for decoder, k in (("ar", None), ("hf-pld", None)):
        code, out, _ = _run(
            capsys,
            "decode",
            "--model",
            str(tiny_checkpoint),
            "--decoder",
            decoder,
            "--k",
            "3",
            "--prompt",
            "abc",
            "--max-new-tokens",
            "6",
            "--json",
        )
        record = json.loads(out)
        assert code == 0 and record["k"] == k
        assert (
            record["configuration"]
            == {
                "ar": "sdsat-bench engine eager: dynamic cache",
                "hf-pld": "transformers generate: dynamic cache, eager; prompt lookup of 10 tokens",
            }[decoder]
        )
        if decoder == "hf-pld":  # transformers' loop: drafted and accepted are unknown, not 0
            assert record["drafted"] is None and record["accepted"] is None and record["loops"] is None


def test_help_and_argument_errors_answer_without_loading_torch():
    for args, code in ((["--help"], 0), (["decode", "--model", "x", "--dtype", "fp8", "--prompt", "a"], 2)):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\nfrom harness.cli import main\ntry:\n    code = main(sys.argv[1:])\n"
                "except SystemExit as e:\n    code = e.code\nprint('torch' in sys.modules)\nsys.exit(code)",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == code and proc.stdout.strip().endswith("False"), (args, proc.stdout, proc.stderr)
    assert (
        "developer"
        not in subprocess.run(
            [sys.executable, "-m", "harness.cli", "--help"], capture_output=True, text=True
        ).stdout.splitlines()[2]
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["--temperature", "-1"], "--temperature must be >= 0"),
        (["--max-new-tokens", "0", "--decoder", "hf"], "--max-new-tokens must be at least 1"),
        (["--top-k", "-2"], "--top-k must be >= 0"),
    ],
)
def test_impossible_sampling_settings_are_one_line(capsys, tiny_checkpoint, args, message):
    code, _, err = _run(capsys, "decode", "--model", str(tiny_checkpoint), "--prompt", "abc", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err


def test_run_refuses_impossible_sampling_before_anything_is_written(capsys, tmp_path, tiny_checkpoint):
    out = tmp_path / "run"
    code, _, err = _run(
        capsys,
        "run",
        "--model",
        str(tiny_checkpoint),
        "--tasks",
        "humaneval",
        "--temperature",
        "0,-0.5",
        "--out",
        str(out),
    )
    assert code == 2 and "--temperature must be >= 0" in err and not out.exists()


def test_a_prompt_beyond_the_models_positions_is_refused(capsys, tiny_checkpoint):
    from harness.models import load_model

    limit = load_model(str(tiny_checkpoint)).model.config.max_position_embeddings
    for decoder in ("ar", "sdsat", "hf"):
        code, _, err = _run(
            capsys,
            "decode",
            "--model",
            str(tiny_checkpoint),
            "--decoder",
            decoder,
            "--k",
            "2",
            "--prompt",
            "a" * limit,
            "--max-new-tokens",
            "8",
        )
        assert code == 2 and f"exceeds the model's {limit} positions" in err, (decoder, err)


def test_an_unknown_hub_model_offline_is_one_line_at_once(capsys, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    code, _, err = _run(capsys, "decode", "--model", "some-name", "--prompt", "abc")
    assert code == 2 and "no local model 'some-name'" in err and "offline" in err
    assert time.monotonic() - start < 30


def test_decode_applies_runs_whitespace_rule(capsys):
    """On the default model a prompt ending in a newline stopped after 2 tokens at EOS (a token
    boundary seen mostly at the ends of files) while the same prompt without it went on: decode drops
    trailing whitespace as run does, so both give the same real continuation."""
    outs = []
    for prompt in ("def gcd(a, b):\n    while b:\n", "def gcd(a, b):\n    while b:"):
        code, out, _ = _run(
            capsys,
            "decode",
            "--model",
            "default",
            "--decoder",
            "ar",
            "--prompt",
            prompt,
            "--max-new-tokens",
            "16",
            "--json",
        )
        assert code == 0
        outs.append(json.loads(out))
    assert outs[0]["completion"] == outs[1]["completion"] and outs[0]["new_tokens"] == 16


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--limit", "0"], "--limit must be at least 1"),
        (["--limit", "-2"], "--limit must be at least 1"),
        (["--n-samples", "0"], "--n-samples must be at least 1"),
        (["--data-dir", "/nonexistent/data"], "--data-dir: not a directory"),
    ],
)
def test_run_refuses_impossible_counts_before_the_model_loads(capsys, tmp_path, flags, expected):
    out = tmp_path / "run"
    code, _, err = _run(
        capsys, "run", "--model", "/nonexistent/model", "--tasks", "humaneval", *flags, "--out", str(out)
    )
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before anything was written (the model is not even looked up)


@pytest.mark.parametrize("damage", ["truncated", "not-gzip"])
def test_a_damaged_gzip_data_file_is_one_line_and_the_other_tasks_still_list(capsys, tmp_path, damage):
    import shutil
    from pathlib import Path

    source = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if not source.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
    data = tmp_path / "data"
    shutil.copytree(source, data)
    damaged = data / "humaneval-infilling" / "HumanEval-SingleLineInfilling.jsonl.gz"
    damaged.write_bytes(damaged.read_bytes()[:200] if damage == "truncated" else b"not gzip at all\n")
    code, out, err = _run(capsys, "tasks", "--data-dir", str(data))
    assert code == 1 and "Traceback" not in out + err
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "error" in rows["humaneval-infill-single"] and "truncated or not gzip" in rows["humaneval-infill-single"]
    assert rows["humaneval-infill-multi"].split()[2] == "5815"
    code, _, err = _run(
        capsys,
        "run",
        "--model",
        "default",
        "--tasks",
        "humaneval-infill-single",
        "--data-dir",
        str(data),
        "--limit",
        "1",
        "--out",
        str(tmp_path / "run"),
    )
    assert code == 2 and "truncated or not gzip" in err and len(err.strip().splitlines()) == 1
