"""The probe's logic on a tiny shape on the CPU (its numbers belong to a GPU): structure, the all-accept
ceiling of each decoder, and the projection of a run's acceptance onto a cost curve."""

from __future__ import annotations

import json
import math

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness.probe import ProbeConfig, project, run_probe

TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
}


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe")
    shape = root / "config.json"
    shape.write_text(json.dumps(TINY))
    cfg = ProbeConfig(
        shape=str(shape),
        engines=("eager",),
        dtype="fp32",
        device="cpu",
        decoders=(("sdsat", 2), ("sdsat-fused", 2)),
        blocks=(1, 2, 4),
        repeats=2,
    )
    return json.loads(run_probe(cfg, str(root / "out")).read_text()), root / "out"


def test_probe_writes_cost_curve_and_all_accept_ceilings(probe):
    result, out = probe
    assert (out / "cost_vs_block.png").exists()
    assert result["parameters"] > 0 and result["roofline"]["weight_bytes"] > 0
    assert "cost, never acceptance" in result["note"]
    engine = result["engines"]["eager"]
    assert set(engine["cost_ms"]) == {"1", "2", "4"} and all(ms > 0 for ms in engine["cost_ms"].values())
    by_name = {(d["decoder"], d["k"]): d for d in engine["decoders"]}
    assert by_name[("ar", 0)]["tokens_per_forward"] == 1.0 and by_name[("ar", 0)]["speedup"] == 1.0
    # every draft accepted: the two-step loop emits k + 2 tokens per 2 passes, the fused one k + 1 per pass
    assert by_name[("sdsat", 2)]["tokens_per_forward"] == pytest.approx(2.0, abs=0.05)
    assert by_name[("sdsat-fused", 2)]["tokens_per_forward"] == pytest.approx(3.0, abs=0.1)
    for row in engine["decoders"]:
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["tokens_per_forward"])


def test_projection_is_tokens_per_forward_times_the_cost_ratio():
    probe = {"engines": {"compile": {"cost_ms": {"1": 2.0, "4": 2.5, "16": 5.0}}}}
    records = [
        {
            "task": "t",
            "problem_id": str(i),
            "decoder": "sdsat",
            "k": 3,
            "temperature": 0.0,
            "new_tokens": 60,
            "forward_passes": 30,
            "block_sizes": [4],
        }
        for i in range(3)
    ] + [
        {
            "task": "t",
            "problem_id": "0",
            "decoder": "ar",
            "k": 0,
            "temperature": 0.0,
            "new_tokens": 60,
            "forward_passes": 60,
            "block_sizes": [1],
        }
    ]
    (row,) = project(records, probe, "compile")
    assert row["projected_speedup"] == pytest.approx(2.0 * 2.0 / 2.5) and row["problems"] == 3
    records[0]["block_sizes"] = [10]  # between two measured sizes: charged the next larger one
    (row,) = project(records, probe, "compile")
    expected = math.exp((math.log(2 * 2 / 5) + 2 * math.log(2 * 2 / 2.5)) / 3)
    assert row["projected_speedup"] == pytest.approx(expected)


def test_report_projects_a_run_onto_a_probe(probe, tmp_path, tiny_checkpoint, capsys):
    _, out = probe
    run = tmp_path / "run"
    args = ["--tasks", "humaneval", "--decoders", "ar,sdsat", "--k", "2", "--limit", "2", "--max-new-tokens", "8"]
    assert main(["run", "--model", str(tiny_checkpoint), *args, "--out", str(run)]) == 0
    assert main(["report", str(run), "--probe", str(out / "probe.json"), "--probe-engine", "eager"]) == 0
    table = (run / "projection.csv").read_text()
    assert "projected_speedup" in table and "measured_speedup" in table and "sdsat" in table
    assert main(["report", str(run), "--probe", str(out / "probe.json"), "--probe-engine", "nope"]) == 2
    assert "not a probe.json with engine 'nope'" in capsys.readouterr().err


def test_unknown_shape_is_one_line():
    with pytest.raises(HarnessError, match="unknown shape 'llama-1t'"):
        run_probe(ProbeConfig(shape="llama-1t", device="cpu"), "/nonexistent")
