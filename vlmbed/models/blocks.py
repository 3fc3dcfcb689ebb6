"""Per-sample attention blocks: segment ids + which segment may attend to which.

A batch in ``block`` attention carries two fields beside the processor's tensors:

- ``segment_ids`` (B, T) int64: the segment of every token (-1 for padding);
- ``segment_visibility`` (B, S, S) bool: ``visibility[b, i, j]`` = a token of segment ``i`` may
  attend to a token of segment ``j`` (rows are queries, columns keys).

The mask is ``visibility[b, seg[q], seg[kv]]``, intersected with the padding mask (and with causal
order when ``block_causal``), built through transformers' mask interface like every other mode.
Collators build the two fields with the layouts below; a batch without them is one segment.
"""

from __future__ import annotations

import torch

SEGMENT_KEYS = ("segment_ids", "segment_visibility")


def block_mask_fn(segment_ids: torch.Tensor, visibility: torch.Tensor, causal: bool = False):
    """``(batch, head, q, kv) -> bool`` for transformers' ``and_mask_function`` (vmapped by sdpa/eager)."""
    seg = segment_ids.long()  # (B, T)
    vis = visibility.bool()  # (B, S, S)
    if seg.shape[0] != vis.shape[0] or vis.shape[1] != vis.shape[2]:
        raise ValueError(f"segment_visibility must be (B, S, S) for segment_ids (B, T); got {tuple(vis.shape)} "
                         f"for {tuple(seg.shape)}")
    if int(seg.max()) >= vis.shape[1]:
        raise ValueError(f"segment id {int(seg.max())} has no row in segment_visibility ({vis.shape[1]} segments)")
    safe = seg.clamp(min=0)

    def fn(batch_idx, head_idx, q_idx, kv_idx):
        sq, sk = safe[batch_idx, q_idx], safe[batch_idx, kv_idx]
        ok = vis[batch_idx, sq, sk] & (seg[batch_idx, q_idx] >= 0) & (seg[batch_idx, kv_idx] >= 0)
        return ok & (kv_idx <= q_idx) if causal else ok

    def dense() -> torch.Tensor:
        """The whole (B, T, T) matrix of ``fn`` (query x key)."""
        rows = torch.arange(seg.shape[0], device=seg.device)[:, None, None]
        ok = vis[rows, safe[:, :, None], safe[:, None, :]] & (seg >= 0)[:, :, None] & (seg >= 0)[:, None, :]
        if causal:
            ok &= torch.ones(seg.shape[1], seg.shape[1], dtype=torch.bool, device=seg.device).tril()
        return ok

    fn.dense = dense
    return fn


def bridge_layout(length_a: int, length_b: int, eos_sees_block_b: bool = True, pad_to: int | None = None):
    """CoCoA's EOS-bridged ("collaborative") layout for one row ``[A | EOS | B]``.

    Segments 0 = A, 1 = EOS, 2 = B. A <-> A, A -> EOS; EOS -> A and EOS (and B when ``eos_sees_block_b``,
    the method figure's default); B <-> B, B -> EOS, never B -> A. Returns ``segment_ids`` (T,) and
    ``visibility`` (3, 3); positions past ``length_a + 1 + length_b`` (up to ``pad_to``) are -1.
    """
    total = length_a + 1 + length_b
    ids = torch.full((pad_to or total,), -1, dtype=torch.long)
    ids[:length_a], ids[length_a], ids[length_a + 1 : total] = 0, 1, 2
    vis = torch.tensor([[1, 1, 0], [1, 1, int(eos_sees_block_b)], [0, 1, 1]], dtype=torch.bool)
    return ids, vis


def turn_layout(turn_ids: torch.Tensor, max_segments: int | None = None):
    """One segment per turn: ``turn_ids`` (T,) with 0 for the shared prefix (image, system), k > 0 for
    turn k, -1 for padding. Every turn sees the prefix and itself; the prefix sees itself. Returns
    ``segment_ids`` (T,) and ``visibility`` (S, S)."""
    ids = turn_ids.long()
    s = max_segments or int(ids.max()) + 1
    vis = torch.eye(s, dtype=torch.bool)
    vis[:, 0] = True
    return ids, vis


def stack_layouts(layouts: list[tuple[torch.Tensor, torch.Tensor]], length: int) -> dict[str, torch.Tensor]:
    """Batch fields from per-row layouts: ids padded with -1 to ``length``, visibility padded to the most
    segments (extra segments see nothing)."""
    s = max(v.shape[0] for _, v in layouts)
    ids = torch.full((len(layouts), length), -1, dtype=torch.long)
    vis = torch.zeros((len(layouts), s, s), dtype=torch.bool)
    for i, (row_ids, row_vis) in enumerate(layouts):
        n = min(length, row_ids.shape[0])
        ids[i, :n] = row_ids[:n]
        vis[i, : row_vis.shape[0], : row_vis.shape[1]] = row_vis
    return {"segment_ids": ids, "segment_visibility": vis}
