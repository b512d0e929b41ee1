"""The version-sensitive cache, mask and position conventions, checked against plain forwards."""

from __future__ import annotations

import torch

from harness import hf_compat
from harness.decoding.trees import DraftTree
from tests.tiny import make_lm


def _logits(model, ids):
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits[0]


def _prefilled(lm, ids):
    cache = hf_compat.new_cache(lm.model)
    hf_compat.forward(lm.model, torch.tensor([ids]), torch.arange(len(ids))[None], cache)
    return cache


def test_crop_then_continue_matches_fresh_forward():
    lm = make_lm(seed=0)
    ids = [0, 23, 24, 25, 26, 27]
    cache = _prefilled(lm, [*ids, 30, 31, 32])
    hf_compat.crop_cache(cache, len(ids))
    assert hf_compat.cache_length(cache) == len(ids)
    got = hf_compat.forward(lm.model, torch.tensor([[28]]), torch.tensor([[len(ids)]]), cache)
    torch.testing.assert_close(got[-1], _logits(lm.model, [*ids, 28])[-1])


def test_tree_mask_and_positions_match_per_path_forwards():
    """Every node's logits under the tree mask equal a plain causal forward over prefix + its path."""
    lm = make_lm(seed=1)
    prefix = [0, 23, 24, 25]
    tree = DraftTree.parse(None, 3)
    tokens = [26] + [23 + (n * 7) % 13 for n in range(1, tree.size + 1)]
    cache = _prefilled(lm, prefix)
    full = torch.ones(tree.size + 1, len(prefix) + tree.size + 1, dtype=torch.bool)
    full[:, len(prefix) :] = tree.ancestor_mask
    logits = hf_compat.forward(
        lm.model,
        torch.tensor([tokens]),
        (len(prefix) + tree.node_depth)[None],
        cache,
        hf_compat.additive_mask(full, lm.dtype),
    )
    for node in range(tree.size + 1):
        path, n = [], node
        while n >= 0:
            path.append(tokens[n])
            n = tree.parent[n]
        torch.testing.assert_close(logits[node], _logits(lm.model, prefix + path[::-1])[-1])


def test_keep_cache_positions_keeps_an_accepted_tree_path():
    lm = make_lm(seed=2)
    prefix = [0, 23, 24]
    tree = DraftTree.parse(None, 3)
    tokens = [25] + [23 + (n * 5) % 13 for n in range(1, tree.size + 1)]
    cache = _prefilled(lm, prefix)
    full = torch.ones(tree.size + 1, len(prefix) + tree.size + 1, dtype=torch.bool)
    full[:, len(prefix) :] = tree.ancestor_mask
    hf_compat.forward(
        lm.model,
        torch.tensor([tokens]),
        (len(prefix) + tree.node_depth)[None],
        cache,
        hf_compat.additive_mask(full, lm.dtype),
    )
    path = tree.leaf_paths[-1]  # a non-contiguous selection
    hf_compat.keep_cache_positions(cache, len(prefix), torch.tensor([0, *path]))
    kept = prefix + [tokens[0]] + [tokens[n] for n in path]
    assert hf_compat.cache_length(cache) == len(kept)
    got = hf_compat.forward(lm.model, torch.tensor([[30]]), torch.tensor([[len(kept)]]), cache)
    torch.testing.assert_close(got[-1], _logits(lm.model, [*kept, 30])[-1])


def test_additive_mask_is_float_with_dtype_min():
    allowed = torch.tensor([[True, False], [True, True]])
    mask = hf_compat.additive_mask(allowed, torch.float32)
    assert mask.shape == (1, 1, 2, 2) and mask.dtype == torch.float32
    assert mask[0, 0, 0, 1] == torch.finfo(torch.float32).min and mask[0, 0, 1, 0] == 0


def test_eager_and_sdpa_agree_on_tree_mask():
    """A bool mask is silently misread by eager attention; our additive mask must work for both."""
    lm = make_lm(seed=3)
    tree = DraftTree.parse(None, 2)
    tokens = [26] + [24] * tree.size
    outs = []
    for impl in ("sdpa", "eager"):
        lm.model.config._attn_implementation = impl
        cache = _prefilled(lm, [0, 23])
        full = torch.ones(tree.size + 1, 2 + tree.size + 1, dtype=torch.bool)
        full[:, 2:] = tree.ancestor_mask
        outs.append(
            hf_compat.forward(
                lm.model,
                torch.tensor([tokens]),
                (2 + tree.node_depth)[None],
                cache,
                hf_compat.additive_mask(full, lm.dtype),
            )
        )
    lm.model.config._attn_implementation = "sdpa"
    # eager attention takes its softmax in float32, hence the float32-level tolerance
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
