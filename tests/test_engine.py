"""The version-sensitive cache, mask and position conventions, checked against plain forwards."""

from __future__ import annotations

import contextlib

import pytest
import torch

from harness import engine as engines
from harness.decoding import peers
from harness.decoding.trees import DraftTree
from harness.engine import decode_engine
from tests.tiny import make_lm


def _logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


ENGINES = ("eager", "static")  # compile runs the same cache code inside a graph (test_greedy_equivalence)


def _prefilled(engine, ids):
    cache = engine.new_cache(64)
    engine.forward(cache, torch.tensor([ids]), torch.arange(len(ids))[None], prefill=True)
    return cache


@pytest.mark.parametrize("mode", ENGINES)
def test_crop_then_continue_matches_fresh_forward(mode):
    lm = make_lm(seed=0)
    engine = engines.DecodeEngine(lm.model, mode)
    ids = [0, 23, 24, 25, 26, 27]
    cache = _prefilled(engine, [*ids, 30, 31, 32])
    cache.crop(len(ids))
    assert cache.length == len(ids)
    got = engine.forward(cache, torch.tensor([[28]]), torch.tensor([[len(ids)]]))
    torch.testing.assert_close(got[-1], _logits(lm.model, [*ids, 28])[-1])


def test_static_cache_is_reused_and_hides_a_previous_generation():
    """The engine hands out one static cache; what an earlier, longer sequence left behind must not
    leak into the next one (the mask spans the whole capacity)."""
    lm = make_lm(seed=7)
    engine = engines.DecodeEngine(lm.model, "static")
    first = _prefilled(engine, [0, 25, 26, 27, 28, 29, 30, 31])
    second = _prefilled(engine, [0, 23])
    assert second is first and second.length == 2 and second.capacity == engines.CAPACITY_STEP
    got = engine.forward(second, torch.tensor([[24, 25]]), torch.tensor([[2, 3]]))
    torch.testing.assert_close(got, _logits(lm.model, [0, 23, 24, 25])[2:])
    assert engine.new_cache(engines.CAPACITY_STEP + 1).capacity == 2 * engines.CAPACITY_STEP


@pytest.mark.parametrize("mode", ENGINES)
def test_tree_mask_and_positions_match_per_path_forwards(mode):
    """Every node's logits under the tree mask equal a plain causal forward over prefix + its path."""
    lm = make_lm(seed=1)
    engine = engines.DecodeEngine(lm.model, mode)
    prefix = [0, 23, 24, 25]
    tree = DraftTree.parse(None, 3)
    tokens = [26] + [23 + (n * 7) % 13 for n in range(1, tree.size + 1)]
    cache = _prefilled(engine, prefix)
    logits = engine.forward(cache, torch.tensor([tokens]), (len(prefix) + tree.node_depth)[None], tree.ancestor_mask)
    for node in range(tree.size + 1):
        path, n = [], node
        while n >= 0:
            path.append(tokens[n])
            n = tree.parent[n]
        torch.testing.assert_close(logits[node], _logits(lm.model, prefix + path[::-1])[-1])


@pytest.mark.parametrize("mode", ENGINES)
def test_keep_cache_positions_keeps_an_accepted_tree_path(mode):
    lm = make_lm(seed=2)
    engine = engines.DecodeEngine(lm.model, mode)
    prefix = [0, 23, 24]
    tree = DraftTree.parse(None, 3)
    tokens = [25] + [23 + (n * 5) % 13 for n in range(1, tree.size + 1)]
    cache = _prefilled(engine, prefix)
    engine.forward(cache, torch.tensor([tokens]), (len(prefix) + tree.node_depth)[None], tree.ancestor_mask)
    path = tree.leaf_paths[-1]  # a non-contiguous selection
    cache.keep(len(prefix), [0, *path])
    kept = prefix + [tokens[0]] + [tokens[n] for n in path]
    assert cache.length == len(kept)
    got = engine.forward(cache, torch.tensor([[30]]), torch.tensor([[len(kept)]]))
    torch.testing.assert_close(got[-1], _logits(lm.model, [*kept, 30])[-1])


def test_additive_mask_is_float_with_dtype_min():
    allowed = torch.tensor([[True, False], [True, True]])
    mask = engines.additive_mask(allowed, torch.float32)
    assert mask.shape == (1, 1, 2, 2) and mask.dtype == torch.float32
    assert mask[0, 0, 0, 1] == torch.finfo(torch.float32).min and mask[0, 0, 1, 0] == 0


def test_eager_and_sdpa_agree_on_tree_mask():
    """A bool mask is silently misread by eager attention; our additive mask must work for both."""
    lm = make_lm(seed=3)
    tree = DraftTree.parse(None, 2)
    tokens = [26] + [24] * tree.size
    engine = engines.DecodeEngine(lm.model)
    outs = []
    for impl in ("sdpa", "eager"):
        lm.model.config._attn_implementation = impl
        cache = _prefilled(engine, [0, 23])
        outs.append(engine.forward(cache, torch.tensor([tokens]), (2 + tree.node_depth)[None], tree.ancestor_mask))
    lm.model.config._attn_implementation = "sdpa"
    # eager attention takes its softmax in float32, hence the float32-level tolerance
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_gpu_attention_leaves_cudnn_out_and_restores_the_flags():
    """cuDNN's attention builds a plan per new (query, key) shape (~50 ms each on an H200) and a
    dynamic cache gives every pass a new one: on a GPU every other sdpa kernel stays allowed."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    with engines.attention_kernels(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_our_passes_and_the_peers_generate_run_under_the_attention_policy(monkeypatch):
    from harness.decoding import SamplingParams, StopCondition, make_decoder

    entered = []

    def recording(device):
        entered.append(device)
        return contextlib.nullcontext()

    monkeypatch.setattr(decode_engine, "attention_kernels", recording)
    monkeypatch.setattr(peers, "attention_kernels", recording)
    lm = make_lm(seed=1)
    stop, greedy = StopCondition(max_new_tokens=5), SamplingParams()
    ar = make_decoder("ar", lm).generate([0, 23, 24], stop, greedy)
    assert len(entered) == 1 + ar.stats.forward_passes  # the prefill and every decode pass
    make_decoder("hf", lm).generate([0, 23, 24], stop, greedy)
    assert len(entered) == 2 + ar.stats.forward_passes  # once around transformers' generate


def test_a_crop_moves_every_layers_write_pointer():
    lm = make_lm(seed=0)
    engine = engines.DecodeEngine(lm.model, "static")
    cache = _prefilled(engine, [0, 23, 24, 25])
    assert [int(layer.cumulative_length) for layer in cache.hf.layers] == [4] * len(cache.hf.layers)
    cache.crop(2)
    assert [int(layer.cumulative_length) for layer in cache.hf.layers] == [2] * len(cache.hf.layers)


def test_fused_projections_keep_the_logits_and_every_decoder_exact():
    """One matrix for q/k/v and one for gate/up (the compiled GPU engine's model): the same logits up to
    rounding, the separate matrices gone, and on the fused model every decoder still emits ar's tokens,
    eager and compiled (backend 'eager': the traced graph of the fused forward)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from harness.decoding import SamplingParams, StopCondition, make_decoder
    from harness.engine.fusion import FusedLlamaAttention, FusedLlamaMLP, fuse_projections
    from tests.tiny import prompt_ids

    lm = make_lm(seed=1, init_range=0.5)
    ids = prompt_ids(lm, "def f(a):\n")
    before = _logits(lm.model, ids)
    layers = lm.model.config.num_hidden_layers
    assert fuse_projections(lm.model) == 2 * layers and fuse_projections(lm.model) == 0  # once only
    assert torch.allclose(_logits(lm.model, ids), before, atol=1e-5)
    attention, mlp = lm.model.model.layers[0].self_attn, lm.model.model.layers[0].mlp
    assert isinstance(attention, FusedLlamaAttention) and isinstance(mlp, FusedLlamaMLP)
    assert not hasattr(attention, "q_proj") and not hasattr(mlp, "gate_proj")
    assert "fused Q/K/V and gate/up" in engines.DecodeEngine(lm.model).description
    stop, greedy = StopCondition(max_new_tokens=24), SamplingParams()
    ar = make_decoder("ar", lm).generate(ids, stop, greedy).tokens
    for mode in ("eager", "compile"):
        lm.engine = engines.DecodeEngine(lm.model, mode, backend="eager")
        for name, k in (("ar", 0), ("sdsat", 3), ("sdsat-fused", 3), ("pld", 3)):
            assert make_decoder(name, lm, k=k).generate(ids, stop, greedy).tokens == ar, (mode, name)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    assert fuse_projections(gpt2) == 0  # other architectures are left as they are


def test_a_record_states_the_matrix_library_of_its_own_pass_widths_only():
    """The engine's CUDA graphs are shared by every decoder of a run: a record names the libraries of its
    decoder's block sizes, so all records of one decoder and k state one configuration, whatever other
    decoders captured before them (a summary cell once joined two texts for one decoder)."""
    from types import SimpleNamespace

    from harness.decoding import configuration, make_decoder

    lm = make_lm(seed=0)
    engine = engines.DecodeEngine(lm.model, "eager")
    engine.mode, engine._graphs = (
        "compile",
        SimpleNamespace(blas={1: "cublaslt", 4: "cublas", 6: "cublaslt"}),
    )  # a GPU's
    lm.engine = engine
    assert "CUDA graph per block size" in engine.description and "cublas" not in engine.description
    assert engine.graph_libraries() == "1: cublaslt, 4: cublas, 6: cublaslt"
    assert configuration(make_decoder("ar", lm), lm).endswith("matrix library per block size: 1: cublaslt")
    assert configuration(make_decoder("sdsat", lm, k=3), lm).endswith("block size: 4: cublas")
    engine._graphs = None
    assert configuration(make_decoder("sdsat", lm, k=3), lm) == engine.description
