"""SDSAT training batches: adaptive groups leave standard-token logits untouched, and each adaptive
token sees exactly its anchor's context and its own group's earlier tokens."""

from __future__ import annotations

import torch

from harness.training.sdsat_batches import IGNORE, batch_mask, build_sdsat_batch
from tests.tiny import make_lm


def test_standard_logits_untouched_by_adaptive_groups():
    lm = make_lm(seed=0, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(23, len(lm.tokenizer), (3, 40), generator=gen)
    batch = build_sdsat_batch(tokens, lm.adaptive.ids_for(6), n_groups=4, generator=gen)
    with torch.no_grad():
        plain = lm.model(tokens).logits
        with_groups = lm.model(
            batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=batch_mask(lm.model, batch.allowed),
        ).logits
    torch.testing.assert_close(with_groups[:, : batch.seq_len], plain, atol=1e-5, rtol=1e-5)


def test_adaptive_logits_equal_a_draft_pass():
    """A_j's logits in training equal those of the draft pass [x_0..x_i, A_1..A_K] used at decode time."""
    lm = make_lm(seed=1, dtype=torch.float32)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(23, len(lm.tokenizer), (1, 30), generator=gen)
    ids = lm.adaptive.ids_for(5)
    batch = build_sdsat_batch(tokens, ids, n_groups=3, generator=gen)
    with torch.no_grad():
        logits = lm.model(
            batch.input_ids,
            position_ids=batch.position_ids,
            attention_mask=batch_mask(lm.model, batch.allowed),
        ).logits[0]
        for group in range(3):
            start = batch.seq_len + group * 5
            anchor = int(batch.position_ids[0, start]) - 1
            draft = lm.model(torch.cat([tokens[:, : anchor + 1], torch.tensor([ids])], dim=1)).logits[0, -5:]
            torch.testing.assert_close(logits[start : start + 5], draft, atol=1e-5, rtol=1e-5)


def test_targets_and_positions():
    tokens = torch.arange(100, 120)[None]
    batch = build_sdsat_batch(tokens, [7, 8, 9], n_groups=5, generator=torch.Generator().manual_seed(2))
    t = batch.seq_len
    assert batch.targets[0, : t - 1].tolist() == list(range(101, 120)) and batch.targets[0, t - 1] == IGNORE
    for col in range(t, batch.input_ids.shape[1]):
        pos = int(batch.position_ids[0, col])
        expected = 100 + pos + 1 if pos + 1 < t else IGNORE
        assert int(batch.targets[0, col]) == expected
    assert batch.input_ids[0, t:].tolist() == [7, 8, 9] * 5
    assert not batch.allowed[0, :t, t:].any()  # standard rows never see adaptive columns


def test_naive_batch_inlines_groups_and_keeps_targets():
    from harness.training.sdsat_batches import build_naive_batch

    tokens = torch.arange(100, 112)[None]
    batch = build_naive_batch(tokens, [7, 8], n_groups=2, generator=torch.Generator().manual_seed(0))
    ids, targets, std = batch.input_ids[0].tolist(), batch.targets[0].tolist(), batch.is_standard[0].tolist()
    assert [t for t, s in zip(ids, std, strict=True) if s] == tokens[0].tolist()
    for col, token in enumerate(ids):
        if token == 7:  # A_1 right after its anchor x_i predicts x_{i+2}, A_2 predicts x_{i+3}
            anchor = ids[col - 1]
            assert targets[col] == (anchor + 2 if anchor + 2 < 112 else IGNORE)
            assert targets[col + 1] == (anchor + 3 if anchor + 3 < 112 else IGNORE)
