"""SDSAT fine-tuning batches: adaptive-token groups packed after each sequence.

For a sequence x_0..x_{T-1} and anchor i, a group of K adaptive tokens A_1..A_K is appended after
the sequence. A_j stands for position i + j (its position id) and is trained to predict x_{i+j+1}.
Visibility (the 4D mask):
- standard tokens: causal over standard tokens only -- they never see a group, so their logits are
  exactly those of the plain sequence;
- A_j of the group at anchor i: x_0..x_i, and A_1..A_j of its own group.
Because A_j sees only A_1..A_j, every shorter group A_1..A_k (k <= K) is a prefix of the full one:
training all K offsets trains every draft length k <= K at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.engine.masks import additive

IGNORE = -100


@dataclass
class SdsatBatch:
    input_ids: torch.Tensor  # (B, T + G*K)
    position_ids: torch.Tensor  # (B, T + G*K)
    allowed: torch.Tensor  # (B, L, L) bool: row may attend to column
    targets: torch.Tensor  # (B, L) the token each position must predict, IGNORE where none
    seq_len: int  # T: the first T columns are standard tokens
    is_standard: torch.Tensor | None = None  # (B, L) bool, for layouts where they are interleaved


def build_sdsat_batch(
    tokens: torch.Tensor, adaptive_ids: list[int], n_groups: int, generator: torch.Generator | None = None
) -> SdsatBatch:
    """``tokens`` (B, T) standard tokens; ``adaptive_ids``: id of A_1..A_K (repeated or distinct)."""
    b, t = tokens.shape
    k = len(adaptive_ids)
    device = tokens.device
    g = n_groups
    # Anchors: distinct positions per row with at least one token after them.
    scores = torch.rand(b, t - 1, generator=generator).to(device)
    anchors = scores.topk(g, dim=1).indices.sort(dim=1).values  # (B, G)
    offsets = torch.arange(1, k + 1, device=device)  # j = 1..K

    group_pos = (anchors[:, :, None] + offsets).reshape(b, g * k)  # position id i + j
    group_ids = torch.tensor(adaptive_ids, device=device).repeat(g)[None].expand(b, -1)
    target_idx = group_pos + 1  # x_{i+j+1}
    group_targets = torch.where(
        target_idx < t, tokens.gather(1, target_idx.clamp(max=t - 1)), torch.full_like(target_idx, IGNORE)
    )
    std_targets = torch.cat([tokens[:, 1:], torch.full((b, 1), IGNORE, device=device, dtype=tokens.dtype)], dim=1)

    n = t + g * k
    idx = torch.arange(n, device=device)
    is_std = idx < t
    group_of = torch.where(is_std, -1, (idx - t) // k)  # (L,)
    slot_of = torch.where(is_std, -1, (idx - t) % k)
    # anchor of each column/row's group, per batch row
    anchor_of = torch.where(
        is_std[None], idx[None].expand(b, -1), anchors.gather(1, group_of.clamp(min=0)[None].expand(b, -1))
    )  # (B, L): for standard tokens their own index
    rows_std = is_std[None, :, None]
    cols_std = is_std[None, None, :]
    causal_std = idx[None, :, None] >= idx[None, None, :]
    std_allowed = rows_std & cols_std & causal_std
    grp_sees_ctx = (~rows_std) & cols_std & (idx[None, None, :] <= anchor_of[:, :, None])
    same_group = group_of[:, None] == group_of[None, :]
    grp_sees_grp = (~rows_std) & (~cols_std) & same_group[None] & (slot_of[None, None, :] <= slot_of[None, :, None])
    allowed = std_allowed | grp_sees_ctx | grp_sees_grp  # (B, L, L)

    return SdsatBatch(
        input_ids=torch.cat([tokens, group_ids], dim=1),
        position_ids=torch.cat([torch.arange(t, device=device)[None].expand(b, -1), group_pos], dim=1),
        allowed=allowed,
        targets=torch.cat([std_targets, group_targets], dim=1),
        seq_len=t,
    )


def build_naive_batch(
    tokens: torch.Tensor, adaptive_ids: list[int], n_groups: int, generator: torch.Generator | None = None
) -> SdsatBatch:
    """The baseline the paper's Figure 5 compares against: each group inserted inline right after its
    anchor, plain causal attention and consecutive positions, so later standard tokens see (and are
    disturbed by) the adaptive tokens. Targets are the same as in :func:`build_sdsat_batch`;
    ``seq_len`` is 0 because standard and adaptive positions are interleaved (see ``is_standard``)."""
    b, t = tokens.shape
    k = len(adaptive_ids)
    rows_ids, rows_targets, rows_std = [], [], []
    scores = torch.rand(b, t - 1, generator=generator)
    anchors = scores.topk(n_groups, dim=1).indices.sort(dim=1).values
    for row in range(b):
        ids, targets, std = [], [], []
        anchor_set = set(anchors[row].tolist())
        x = tokens[row].tolist()
        for i in range(t):
            ids.append(x[i])
            targets.append(x[i + 1] if i + 1 < t else IGNORE)
            std.append(True)
            if i in anchor_set:
                ids += adaptive_ids
                targets += [x[i + j + 1] if i + j + 1 < t else IGNORE for j in range(1, k + 1)]
                std += [False] * k
        rows_ids.append(ids)
        rows_targets.append(targets)
        rows_std.append(std)
    n = t + n_groups * k
    device = tokens.device
    batch = SdsatBatch(
        input_ids=torch.tensor(rows_ids, device=device),
        position_ids=torch.arange(n, device=device)[None].expand(b, -1),
        allowed=torch.ones(n, n, dtype=torch.bool, device=device).tril()[None].expand(b, -1, -1),
        targets=torch.tensor(rows_targets, device=device),
        seq_len=0,
    )
    batch.is_standard = torch.tensor(rows_std, device=device)
    return batch


def batch_mask(model, allowed: torch.Tensor) -> torch.Tensor:
    """A batch's (B, 1, L, L) attention mask from its (B, L, L) bool 'may attend' matrices, in the form
    the model's attention kernel reads: sdpa takes bool (True = attend) whatever the autocast dtype;
    eager attention adds the mask to its scores, so a bool mask would be misread: it gets the additive
    float mask in the model's dtype."""
    if model.config._attn_implementation != "eager":
        return allowed[:, None]
    return additive(allowed, model.dtype)[:, None]
