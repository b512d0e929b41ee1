"""Greedy divergences told apart: a deliberately broken decoder is a `mismatch` in bf16 and fp32; real
decoders' bf16 divergences are `numerical`; the gate fails on a mismatch."""

from __future__ import annotations

import json

import pytest
import torch

from harness.decoding import SamplingParams, StopCondition, make_decoder
from harness.decoding.acceptance import greedy_prefix
from harness.decoding.sdsat import SdsatDecoder, two_step_loop
from harness.decoding.session import DecodeSession
from harness.exactness import classify, first_divergence
from tests.tiny import make_lm, prompt_ids

GREEDY = SamplingParams()
PROMPTS = ["def f(a):\n", "abc", "(((hh)) ega: bad\n", "hhh", "a(b)c"]


def off_by_one_verify(s: DecodeSession, t1: int, draft_logits: torch.Tensor):
    """verify_chain with the bug this test must catch: one draft more than matched is accepted."""
    drafts = torch.argmax(draft_logits, dim=-1).tolist()
    prefix = s.cache_length
    predictions = torch.argmax(s.forward([t1, *drafts]), dim=-1).tolist()
    m = min(greedy_prefix(drafts, predictions) + 1, len(drafts))
    s.crop(prefix + 1 + m)
    return drafts[:m], predictions[m]


class OffByOneSdsat(SdsatDecoder):
    name = "sdsat"

    def generate(self, prompt_ids, stop, sampling):
        s = DecodeSession(self.lm, prompt_ids, stop, sampling, max_block=self.k + 1)
        s.prefill()
        with s.decoding() as t:
            two_step_loop(s, self.adaptive_ids, off_by_one_verify, drafted=self.k)
        return s.result(t)


def _pairs(dtype, decoder_factory, seed=0):
    """(prompt ids, AR generation, other generation) for every prompt, in ``dtype``."""
    lm = make_lm(seed=seed, init_range=0.5, dtype=dtype)
    stop = StopCondition(max_new_tokens=40)
    out = []
    for prompt in PROMPTS:
        ids = prompt_ids(lm, prompt)
        ar = make_decoder("ar", lm).generate(ids, stop, GREEDY)
        out.append((ids, ar, decoder_factory(lm).generate(ids, stop, GREEDY)))
    return lm, out


def _higher(lm, dtype):
    return make_lm(seed=int(lm.name.split("-")[1]), init_range=0.5, dtype=dtype).model


def test_first_divergence():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 3]) == 2


@pytest.mark.parametrize("dtype,higher", [(torch.float32, torch.float64), (torch.bfloat16, torch.float32)])
def test_an_off_by_one_decoder_is_a_mismatch(dtype, higher):
    lm, pairs = _pairs(dtype, lambda lm: OffByOneSdsat(lm, 4))
    hi = _higher(lm, higher)
    classes = []
    for ids, ar, bad in pairs:
        result = classify(lm.model, hi, ids, (ar.tokens, ar.stop_reason), (bad.tokens, bad.stop_reason), frozenset())
        classes.append(result.exactness)
        if result.exactness != "identical":
            assert result.evidence["gap"] > 2 * result.evidence["delta"]
    assert "mismatch" in classes and "numerical" not in classes, classes


def test_real_bf16_divergences_are_numerical():
    """Whatever diverges between AR and the real decoders in bf16 is a near-tie of rounding."""
    seen = {"identical": 0, "numerical": 0, "mismatch": 0}
    for seed in range(2):
        for name, k in (("sdsat", 4), ("sdsat-fused", 3)):
            lm, pairs = _pairs(torch.bfloat16, lambda lm, name=name, k=k: make_decoder(name, lm, k=k), seed)
            hi = _higher(lm, torch.float32)
            for ids, ar, other in pairs:
                result = classify(
                    lm.model, hi, ids, (ar.tokens, ar.stop_reason), (other.tokens, other.stop_reason), frozenset()
                )
                seen[result.exactness] += 1
    assert seen["mismatch"] == 0, seen


def test_the_gate_fails_on_a_mismatch(tmp_path, tiny_checkpoint, monkeypatch, capsys):
    from harness.cli import main
    from harness.decoding import REGISTRY, DecoderSpec

    # the registry is the one place a decoder is named: the broken one replaces sdsat for this run
    monkeypatch.setitem(REGISTRY, "sdsat", DecoderSpec("sdsat", lambda lm, o: OffByOneSdsat(lm, o.k), "any"))
    out = tmp_path / "run"
    args = ["--tasks", "humaneval", "--decoders", "ar,sdsat", "--k", "3", "--limit", "4", "--max-new-tokens", "24"]
    assert main(["run", "--model", str(tiny_checkpoint), *args, "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    spec = [r for r in records if r["decoder"] == "sdsat"]
    assert any(r["exactness"] == "mismatch" for r in spec), [r["exactness"] for r in spec]
    assert all(r["exactness_evidence"] for r in spec if r["exactness"] != "identical")
    baseline = tmp_path / "baseline.json"
    assert main(["check", str(out), "--baseline", str(baseline), "--update-baseline"]) == 0
    capsys.readouterr()
    assert main(["check", str(out), "--baseline", str(baseline)]) == 1
    assert "diverge from AR (mismatch" in capsys.readouterr().out
