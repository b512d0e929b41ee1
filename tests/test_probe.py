"""The probe's logic on a tiny shape on the CPU (its numbers belong to a GPU): structure, the all-accept
ceiling of each decoder, and the projection of a run's acceptance onto a cost curve."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from harness import probe as probe_module
from harness.cli import main
from harness.config import ProbeConfig
from harness.errors import HarnessError
from harness.probe import project, run_probe

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
        decoders=("sdsat", "sdsat-fused", "medusa", "eagle"),
        ks=(2,),
        blocks=(1, 2, 4),
        repeats=2,
        variant="both",
    )
    costs = itertools.count(1.0, 0.5)

    def rising_cost(device, one_pass, repeats):
        """Each pass runs (its code is exercised) but its cost is made up, rising block by block: timings
        belong to a GPU, and a busy CI machine once made this tiny shape's measured curve non-monotone,
        which the probe rightly refuses (that refusal has a test of its own)."""
        one_pass()
        return next(costs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(probe_module, "median_ms", rising_cost)
        patch.setattr(probe_module, "GENERATION_SECONDS", 0.0)  # the fewest rounds: timings are a GPU's
        paths = run_probe(cfg, str(root / "out"))
    assert [p.parent.name for p in paths] == ["random", "all-accept"]
    random, all_accept = (json.loads(p.read_text()) for p in paths)
    # one model, one cost curve; only the decoders' acceptance differs
    assert random["engines"]["eager"]["cost_ms"] == all_accept["engines"]["eager"]["cost_ms"]
    assert random["variant"] == "random" and all_accept["variant"] == "all-accept"
    return all_accept, root / "out" / "all-accept"


def test_probe_writes_cost_curve_and_all_accept_ceilings(probe):
    result, out = probe
    assert (out / "cost_vs_block.png").exists()
    assert result["parameters"] > 0 and result["roofline"]["weight_bytes"] > 0
    assert "cost, never acceptance" in result["note"] and result["attn_implementation"] == "sdpa"
    engine = result["engines"]["eager"]
    assert set(engine["cost_ms"]) == {"1", "2", "4"} and all(ms > 0 for ms in engine["cost_ms"].values())
    by_name = {(d["decoder"], d["k"]): d for d in engine["decoders"]}
    assert by_name[("ar", 0)]["tokens_per_forward"] == 1.0 and by_name[("ar", 0)]["speedup"] == 1.0
    # every draft accepted: the two-step loop emits k + 2 tokens per 2 passes, the fused one k + 1 per pass
    assert by_name[("sdsat", 2)]["tokens_per_forward"] == pytest.approx(2.0, abs=0.05)
    assert by_name[("sdsat-fused", 2)]["tokens_per_forward"] == pytest.approx(3.0, abs=0.1)
    # the trained peers' synthetic drafters (zero heads, a pass-through layer): k + 1 per pass as well
    assert by_name[("medusa", 2)]["tokens_per_forward"] == pytest.approx(3.0, abs=0.1)
    assert by_name[("eagle", 2)]["tokens_per_forward"] == pytest.approx(3.0, abs=0.1)
    for row in engine["decoders"]:
        assert row["efficiency"] == pytest.approx(row["speedup"] / row["tokens_per_forward"])
    # where one AR pass spends its time (the CPU's operations here; the kernels on a GPU)
    profile = engine["profile"]
    assert profile and all(row["ms_per_pass"] > 0 for row in profile)
    assert any("addmm" in row["operation"] or "mm" in row["operation"] for row in profile)
    assert sum(row["share"] for row in profile) <= 1.0 + 1e-9


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
    for record in records[:3]:  # beyond the largest measured block: not priced, rather than guessed
        record["block_sizes"] = [1000]
    assert project(records, probe, "compile") == []


def test_projection_charges_the_probes_measured_pass_of_that_decoder():
    """Where the probe timed the decoder at that k in whole generations, a pass costs what it measured
    there (host work included), not the kernels' cost curve."""
    probe = {
        "engines": {
            "compile": {
                "cost_ms": {"1": 2.0, "4": 2.5},
                "ar_tokens_per_s": 400.0,  # 2.5 ms per AR pass
                "decoders": [
                    {"decoder": "sdsat", "k": 3, "block_sizes": [4], "tokens_per_forward": 2.5, "tokens_per_s": 800.0}
                ],
            }
        }
    }
    record = {"task": "t", "problem_id": "0", "decoder": "sdsat", "k": 3, "temperature": 0.0}
    record |= {"new_tokens": 60, "forward_passes": 30, "block_sizes": [4]}
    (row,) = project([record], probe, "compile")
    # 2 tokens per pass x (2.5 ms per AR pass / 3.125 ms per sdsat pass)
    assert row["projected_speedup"] == pytest.approx(2.0 * 2.5 / 3.125)


def test_named_shapes_have_their_own_head_width_and_lm_head(tiny_checkpoint):
    """CodeLlama's head width is hidden / heads and its lm_head is not the embedding: a shape must not
    inherit the base model's head_dim or tying (that would halve a 7B's attention projections)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    from harness.probe import shape_config

    base = AutoConfig.from_pretrained(tiny_checkpoint)
    base.head_dim, base.tie_word_embeddings = 8, True
    for shape, hidden, layers, ffn in (("codellama-7b", 4096, 32, 11008), ("codellama-13b", 5120, 40, 13824)):
        cfg = LlamaConfig(**shape_config(shape, base))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(cfg)
        matrices = layers * (4 * hidden * hidden + 3 * hidden * ffn) + 2 * cfg.vocab_size * hidden
        norms = (2 * layers + 1) * hidden
        assert sum(p.numel() for p in model.parameters()) == matrices + norms


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


def test_a_cost_curve_that_is_not_monotone_is_measured_again_then_refused(monkeypatch):
    assert probe_module.non_monotone({1: 77.0, 2: 689.0, 4: 197.0, 8: 222.0}) == [(2, 4), (2, 8)]
    assert probe_module.non_monotone({1: 5.40, 8: 5.56, 64: 5.46}) == []  # 2%: timer noise
    busy = iter([77.0, 689.0, 197.0, 222.0, 222.0, 197.0, 689.0, 77.0, 1.0, 2.0, 3.0, 4.0])
    monkeypatch.setattr(probe_module, "median_ms", lambda device, fn, repeats: next(busy))

    class Engine:
        def reserve(self, n): ...
        def warm_up(self, blocks): ...
        def new_cache(self, n):
            return type("Cache", (), {"crop": lambda self, n: None})()

        def forward(self, *args, **kwargs): ...

    import torch

    lm = type("LM", (), {"engine": Engine(), "device": torch.device("cpu")})()
    # measured busy twice (the second time in reverse order), quiet the third time: that curve is kept
    assert probe_module.cost_curve(lm, (1, 2, 4, 8), repeats=3) == {1: 1.0, 2: 2.0, 4: 3.0, 8: 4.0}
    busy = iter([77.0, 689.0, 197.0, 222.0] * 3)
    with pytest.raises(HarnessError, match=r"not monotone \(2 tokens 689 ms > 4 tokens 197 ms"):
        probe_module.cost_curve(lm, (1, 2, 4, 8), repeats=3)


def test_decoders_are_timed_in_turns_and_their_median_kept(monkeypatch):
    """A round gives every decoder one generation; a slow moment lands on one generation of each, in one
    round, and the median over the rounds drops it (s3's H200 probe, timed over three generations a
    decoder one after the other, read sdsat's passes 24% dearer at k = 5 than at k = 3)."""
    import harness.decoding

    order = []
    slow_round = 2

    class Decoder:
        def __init__(self, name, k):
            self.name, self.k, self.runs = name, k, 0

        def block_sizes(self, greedy):
            return (self.k + 1,)

        def generate(self, prompt, stop, params):
            order.append(self.name)
            self.runs += 1
            slow = self.runs - 1 == slow_round  # the warm-up is run 0
            stats = type("Stats", (), {"tokens_per_forward": 1.0, "tokens_per_s": 10.0 if slow else 100.0})
            return type("Generation", (), {"stats": stats})()

    monkeypatch.setattr(harness.decoding, "make_decoder", lambda name, lm, k, drafter: Decoder(name, k))
    monkeypatch.setattr(probe_module, "GENERATION_ROUNDS", 5)
    monkeypatch.setattr(probe_module, "GENERATION_SECONDS", 60.0)  # the round cap ends the timing
    lm = type("LM", (), {"engine": type("Engine", (), {"warm_up": lambda self, blocks: None})()})()
    rows = probe_module.decoder_speeds(lm, [("sdsat", 3), ("sdsat", 5)], repeats=3)
    assert order[:3] == ["ar", "sdsat", "sdsat"] and order[3:] == ["ar", "sdsat", "sdsat"] * 5
    assert [row["generations"] for row in rows] == [5, 5, 5]
    assert [row["tokens_per_s"] for row in rows] == [100.0] * 3 and [row["speedup"] for row in rows] == [1.0] * 3


def test_probe_refuses_a_decoder_it_cannot_draft_for(tmp_path, capsys):
    args = ["--shape", "codellama-7b", "--decoders", "pld", "--device", "cpu", "--out", str(tmp_path)]
    assert main(["probe", *args]) == 2
    assert "cannot probe 'pld'" in capsys.readouterr().err


def test_the_probe_builds_its_shape_with_the_attention_a_run_would_use(tmp_path):
    """--attn-implementation eager: the attention the compile engine fuses, measured against sdpa's."""
    shape = tmp_path / "config.json"
    shape.write_text(json.dumps(TINY))
    lm = probe_module.synthetic_model(ProbeConfig(shape=str(shape), device="cpu", attn_implementation="eager"))
    assert lm.model.config._attn_implementation == "eager"


def test_a_trained_models_shape_is_probed_on_its_own_vocabulary(tiny_checkpoint, tmp_path):
    """A size-series point's config.json lends its own tokenizer and adaptive tokens (a device run then
    needs no default model beside it); a bare config.json has none to lend and takes the default's."""
    from harness.models import load_model

    own = probe_module.synthetic_model(ProbeConfig(shape=str(tiny_checkpoint / "config.json"), device="cpu"))
    trained = load_model(str(tiny_checkpoint))
    assert own.adaptive.token_ids == trained.adaptive.token_ids
    assert own.model.config.vocab_size == trained.model.config.vocab_size == len(own.tokenizer)
    bare = tmp_path / "config.json"
    bare.write_text((tiny_checkpoint / "config.json").read_text())
    assert probe_module.vocabulary_source(str(bare)) == "default"
    assert probe_module.vocabulary_source("codellama-7b") == "default"
