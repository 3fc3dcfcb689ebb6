"""Padding-free forwards: the rows of a right-padded batch packed into fewer, fuller sequences.

A batch of mixed lengths pads every row to its longest; the language model then computes every pad slot.
Packing puts several rows one after another in one sequence (first-fit decreasing into sequences of a
length chosen per batch) and keeps them apart with the attention mask: a token sees only tokens
of its own row (in causal order when the mode is causal), and position ids are the ones each row has on its
own (computed on the padded batch, then moved), so every row's hidden states are the unpacked ones up to
floating-point rounding. The hidden states are moved back to the padded layout, so pooling and everything
after the forward see the batch as it came.

Images: the vision tower runs on the batch's images as before; the families whose images are flat over the
batch in row order (Qwen-VL: ``pixel_values`` rows, one ``image_grid_thw`` per image) get them reordered to
follow the packed rows (``FamilyAdapter.pack_media``). Families whose model adds structure to the mask (Gemma
3's bidirectional image blocks, sliding windows) or keeps images per row (SmolVLM, LLaVA-OneVision) pack
text-only batches only.

Used where it saves work: :func:`plan_packing` returns None unless the packed batch costs at least
``min_saving`` less than the padded one (equal-length batches run as they are); packed rows may be longer
than the longest row (up to twice) where that fills them better for less than it adds to attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Packing", "plan_packing"]


@dataclass
class Packing:
    """Where every real token of a (B, T) batch goes in the packed (P, L) batch."""

    rows: torch.Tensor  # (N,) source row of each real token
    cols: torch.Tensor  # (N,) source column
    prow: torch.Tensor  # (N,) packed row
    pcol: torch.Tensor  # (N,) packed column
    order: list[int]  # source rows in packed order (packed row 0's rows first)
    segment_ids: torch.Tensor  # (P, L) which of its packed row's sequences a token is (-1: padding)
    shape: tuple[int, int]  # (B, T) of the padded batch

    @property
    def packed_shape(self) -> tuple[int, int]:
        return tuple(self.segment_ids.shape)

    def pack(self, x: torch.Tensor, fill: int = 0) -> torch.Tensor:
        """(..., B, T) per-token values -> (..., P, L); padding slots ``fill``."""
        lead = x.shape[:-2]
        out = x.new_full((*lead, *self.packed_shape), fill)
        out[..., self.prow, self.pcol] = x[..., self.rows, self.cols]
        return out

    def unpack(self, hidden: torch.Tensor) -> torch.Tensor:
        """(P, L, d) -> (B, T, d) in the padded layout (zeros at padding; gradients flow back)."""
        out = hidden.new_zeros((*self.shape, hidden.shape[-1]))
        return out.index_put((self.rows, self.cols), hidden[self.prow, self.pcol])

    def masks(self, text_config, dtype: torch.dtype, causal: bool) -> dict:
        """The per-layer-type masks of the packed batch: :meth:`block_fn` through
        :func:`~vlmbed.models.attention.build_attention_masks` (built from its dense form where it can)."""
        from vlmbed.models.attention import build_attention_masks

        return build_attention_masks("block", text_config, (self.segment_ids >= 0).long(), dtype,
                                     block_fn=self.block_fn(causal))

    def block_fn(self, causal: bool):
        """``(batch, head, q, kv) -> bool``: same sequence of the packed row (and kv <= q when ``causal``)."""
        from vlmbed.models.blocks import block_mask_fn

        eye = torch.eye(int(self.segment_ids.max()) + 1, dtype=torch.bool, device=self.segment_ids.device)
        fn = block_mask_fn(self.segment_ids, eye.expand(self.segment_ids.shape[0], -1, -1), causal=causal)
        fn.within_rows = "causal" if causal else "bidirectional"  # the attention each row gets
        return fn


# packed row lengths tried, in units of the batch's longest row: steps of 1/20 from 1 to 2 (on the mixed batches of
# benchmarks/train_throughput.py, 3.7% fewer token slots than steps of 1/4)
CAPACITIES = tuple(1 + i / 20 for i in range(21))


def plan_packing(attention_mask: torch.Tensor, min_saving: float = 0.1, hidden_size: int | None = None) -> Packing | None:
    """The packing of a right-padded (B, T) batch, or None when it would save less than ``min_saving`` of the
    padded batch's cost (or the padding is not on the right).

    Rows go first-fit decreasing into packed rows of a capacity from :data:`CAPACITIES` x the longest row, the
    one of least cost: token slots x (1 + L / (3 x ``hidden_size``)) for packed rows of length L (attention
    grows with L: its FLOPs per token are L / (6 x hidden) of the matmuls', and masked attention kernels run
    at about half the matmul rate on CPU); without ``hidden_size``, token slots alone."""
    mask = attention_mask.bool()
    b, t = mask.shape
    lengths = mask.sum(dim=1)  # (B,)
    if b < 2 or not bool((mask == (torch.arange(t, device=mask.device) < lengths[:, None])).all()):
        return None
    lens = lengths.tolist()

    def cost(rows: int, length: int) -> float:
        return rows * length * (1 + length / (3 * hidden_size) if hidden_size else 1)

    options = []  # (packed rows, their length = the fullest one's tokens) per capacity
    longest = max(lens)
    for capacity in sorted({int(f * longest) for f in CAPACITIES}):
        bins = _first_fit(lens, capacity)
        options.append((bins, max(sum(lens[r] for r in m) for m in bins)))
    bins, length = min(options, key=lambda o: cost(len(o[0]), o[1]))
    p = len(bins)
    if cost(p, length) > (1 - min_saving) * cost(b, t):
        return None
    rows, cols, prow, pcol, seg = [], [], [], [], torch.full((p, length), -1, dtype=torch.long)
    for k, members in enumerate(bins):
        start = 0
        for s, r in enumerate(members):
            n = lens[r]
            rows.append(torch.full((n,), r, dtype=torch.long))
            cols.append(torch.arange(n))
            prow.append(torch.full((n,), k, dtype=torch.long))
            pcol.append(torch.arange(start, start + n))
            seg[k, start : start + n] = s
            start += n
    device = attention_mask.device
    return Packing(*(torch.cat(x).to(device) for x in (rows, cols, prow, pcol)), order=[r for m in bins for r in m],
                   segment_ids=seg.to(device), shape=(b, t))


def _first_fit(lens: list[int], capacity: int) -> list[list[int]]:
    """Rows (indices into ``lens``) per packed row: first-fit decreasing into rows of ``capacity`` tokens."""
    bins: list[list[int]] = []
    room: list[int] = []
    for r in sorted(range(len(lens)), key=lambda i: (-lens[i], i)):
        for k, free in enumerate(room):
            if lens[r] <= free:
                bins[k].append(r)
                room[k] -= lens[r]
                break
        else:
            bins.append([r])
            room.append(capacity - lens[r])
    return bins


def packed_inputs(inputs: dict, packing: Packing, adapter, image_token_id: int | None) -> dict:
    """The processor inputs of the packed batch: per-token tensors packed, ``attention_mask`` of the packed
    rows, images reordered to follow the packed rows (:meth:`FamilyAdapter.split_media` per row)."""
    b, t = packing.shape
    out = {}
    for key, value in inputs.items():
        if key in adapter.media_keys:
            continue
        if torch.is_tensor(value) and value.dim() == 2 and tuple(value.shape) == (b, t):
            out[key] = packing.pack(value)
        else:
            out[key] = value
    out["attention_mask"] = (packing.segment_ids >= 0).to(inputs["attention_mask"].dtype)
    if adapter.has_media(inputs):
        per_row = adapter.split_media(inputs, [(r, r + 1) for r in range(b)], image_token_id)
        for key in adapter.media_keys:
            parts = [per_row[r][key] for r in packing.order if key in per_row[r]]
            if parts:
                out[key] = torch.cat(parts, dim=0)
    return out
