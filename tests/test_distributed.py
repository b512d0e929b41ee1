"""Data-parallel evaluation: two processes under ``accelerate launch`` (gloo on CPU) shard problems,
write per-process shards, and the merged results equal a single-process run record for record
(timings and device aside); --resume works across shards left by a killed run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

# Under pytest-xdist (--dist loadgroup) these tests share one worker: their launches use one rendezvous port.
pytestmark = pytest.mark.xdist_group("distributed")

RUN = ["--tasks", "humaneval", "--decoders", "ar,sdsat", "--k", "1,2", "--limit", "5", "--max-new-tokens", "6"]
MEASURED = ("prefill_s", "decode_s", "decode_cpu_s", "tokens_per_s", "tokens_per_s_e2e", "device")


# --multi_gpu is accelerate's torchrun launcher; on a machine without CUDA its processes use gloo
LAUNCH = [
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]


def _launch(args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH, "-m", "harness.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _unmeasured(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in MEASURED} for r in records]


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]) == 0
    return _records(out)


def test_two_processes_merge_to_the_single_process_results(tmp_path, tiny_checkpoint, single):
    out = tmp_path / "two"
    proc = _launch(["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _unmeasured(_records(out)) == _unmeasured(single)
    assert not list(out.glob("results.rank*.jsonl"))  # merged, shards removed
    info = json.loads((out / "run.json").read_text())
    assert info["processes"] == 2 and info["process_devices"] == ["cpu", "cpu"]
    assert (out / "report.html").exists()


def test_resume_across_shards_of_a_killed_run(tmp_path, tiny_checkpoint, single):
    out = tmp_path / "killed"
    argv = ["run", "--model", str(tiny_checkpoint), *RUN, "--out", str(out)]
    assert main(argv) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    # as a distributed run killed mid-way leaves it: two shards, one ending in a half-written record
    (out / "results.jsonl").unlink()
    (out / "results.rank0.jsonl").write_text("\n".join(lines[:4]) + "\n")
    (out / "results.rank1.jsonl").write_text("\n".join(lines[5:8]) + "\n" + lines[8][:20])
    proc = _launch([*argv, "--resume"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _unmeasured(_records(out)) == _unmeasured(single)  # nothing lost, nothing twice
    assert not list(out.glob("results.rank*.jsonl"))


def test_ddp_training_on_two_processes_keeps_replicas_identical(tmp_path):
    """The recipe's training loop under DDP: both processes take the same number of steps (the step
    count fixed from timings is agreed between them) and end with identical weights."""
    prefix = tmp_path / "ddp"
    script = str(Path(__file__).with_name("ddp_train.py"))
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH, script, str(prefix)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ranks = [json.loads((tmp_path / f"ddp.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 64
    assert ranks[0]["tokens"] == 64 * 2 * 4 * 32 * 2  # steps x micro-batches x batch x seq_len x processes
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)


def test_recipe_on_two_processes_builds_data_once_and_trains_a_fixed_step_count(tmp_path):
    """`sdsat-bench train` under accelerate launch: the data stages run on the main process while the
    other waits, both train (DDP) for exactly --max-steps, the main process saves a loadable checkpoint."""
    from harness.models import load_model
    from tests.test_training import HUMANEVAL

    work = tmp_path / "work"
    root = Path(__file__).resolve().parent.parent / "harness"
    proc = _launch(
        [
            "train",
            "--work",
            str(work),
            "--roots",
            str(root),
            "--mb",
            "python=1",
            "--humaneval",
            str(HUMANEVAL),
            "--stages",
            "corpus,tokenizer,tokens,pretrain,sdsat",
            "--vocab-size",
            "400",
            "--hidden",
            "32",
            "--layers",
            "2",
            "--heads",
            "2",
            "--intermediate",
            "64",
            "--seq-len",
            "64",
            "--batch-size",
            "4",
            "--max-k",
            "4",
            "--max-steps",
            "12",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    timings = json.loads((work / "timings.json").read_text())
    assert set(timings) == {"corpus", "tokenizer", "tokens", "pretrain", "sdsat"}
    for name in ("pretrain", "sdsat"):
        summary = json.loads((work / f"{name}_summary.json").read_text())
        assert summary["processes"] == 2 and summary["steps"] == 12
        assert summary["tokens"] == 12 * 4 * 64 * 2  # steps x batch x seq_len x processes
    assert "heldout_standard_loss" in json.loads((work / "sdsat_summary.json").read_text())["heldout"]
    assert load_model(str(work / "sdsat")).adaptive.max_k == 4


@pytest.mark.parametrize("lora", [False, True])
def test_retrofit_on_two_processes(tmp_path, lora):
    """`train --base` under accelerate launch: both processes train (DDP) for exactly --max-steps, full
    or LoRA, and the main process writes a checkpoint or adapter that loads."""
    from harness.models import load_model
    from tests.bases import SOURCES, save_base

    base = save_base(tmp_path, "llama")
    work = tmp_path / "work"
    args = ["train", "--base", str(base), "--work", str(work), "--roots", str(SOURCES / "decoding")]
    args += ["--stages", "corpus,tokenizer,tokens,sdsat", "--max-steps", "4", "--batch-size", "2", "--seq-len", "64"]
    proc = _launch(args + (["--lora-rank", "2"] if lora else []))
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((work / "sdsat_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 4
    assert summary["tokens"] == 4 * 2 * 64 * 2  # steps x batch x seq_len x processes
    assert load_model(str(work / "sdsat")).adaptive.max_k == 15


def test_a_retrofit_cut_on_two_processes_continues_in_the_next_call(tmp_path):
    """`--call-minutes` under accelerate launch: both processes stop at the same step (one late process
    would hang the other), each saves its own data generators, and the next call finishes the LoRA
    fine-tune from there."""
    from tests.bases import SOURCES, save_base

    base = save_base(tmp_path, "llama")
    work = tmp_path / "work"
    args = ["train", "--base", str(base), "--work", str(work), "--roots", str(SOURCES / "decoding"), "--lora-rank", "2"]
    args += ["--stages", "corpus,tokenizer,tokens,sdsat", "--max-steps", "2", "--batch-size", "2", "--seq-len", "64"]
    cut = _launch([*args, "--call-minutes", "0"])
    # exit 0 under a launcher, which would read 3 as a crash: the line and the state say it is cut
    assert cut.returncode == 0 and "stage 'sdsat' stopped at step 1 of 2" in cut.stderr, cut.stderr[-2000:]
    assert not (work / "sdsat" / "sdsat_adapter.json").exists()
    assert {p.name for p in (work / "sdsat.state").glob("loop_*.pt")} == {"loop_0.pt", "loop_1.pt"}
    done = _launch([*args, "--call-minutes", "0"])
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((work / "sdsat_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2 and summary["calls"] == 2
    assert not (work / "sdsat.state").exists() and (work / "sdsat" / "sdsat_adapter.json").exists()


def test_processes_beyond_the_gpus_share_them_round_robin():
    """More processes than GPUs (an accuracy run on one GPU): each takes a GPU in turn; with one GPU
    per process, process i takes GPU i; a CPU run stays on the CPU."""
    from harness.distributed import Shard

    shared = [Shard(i, 4, i, gpus=1).device("cuda") for i in range(4)]
    assert shared == ["cuda:0"] * 4
    assert [Shard(i, 4, i, gpus=2).device("cuda") for i in range(4)] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert Shard(1, 2, 1).device("cuda") == "cuda:1"
    assert Shard(1, 2, 1, gpus=1).device("cpu") == "cpu"
