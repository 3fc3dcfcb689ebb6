r"""GradCache: a large contrastive batch in small chunks, with gradients equal to the full batch's.

Contrastive losses couple every embedding of the batch, so a batch cannot simply be split into
gradient-accumulation steps. GradCache (Gao et al., 2021) splits the *encoder* work instead:

1. **Embed** every chunk of every role without a graph (``torch.no_grad``), remembering the RNG
   state of each chunk; concatenate into representations :math:`r` (detached leaves).
2. **Loss** on the representations only: :math:`L(r)`, any contrastive objective, including the
   cross-device gather (``vlmbed.dist``). ``L.backward()`` gives :math:`g = \partial L/\partial r`, the
   *cached gradient*; nothing here touched the model.
3. **Re-embed** each chunk with a graph (same RNG state, so dropout masks match) and backpropagate
   the surrogate :math:`\sum r_c \cdot g_c`, whose gradient with respect to the parameters is
   :math:`\sum_c (\partial r_c/\partial\theta)^\top g_c = \partial L/\partial\theta`.

Peak activation memory is that of one chunk; the price is a second forward pass.

Stage 1 keeps no graph, so its forwards may take larger chunks (``embed_chunk_size``: a gradient-free
forward holds one layer's activations at a time, a chunk with a graph every layer's): fewer, fuller forwards
for the same result. Only where no dropout is active: stage 3 must draw the random numbers stage 1 drew,
which holds only when both cut the batch alike (:func:`has_active_dropout`).

Works for one embedding per sequence (B, d) and several (B, k, d): the cache holds whatever the
encoder returns. Distributed engines see ordinary forward/backward calls: the caller's ``sync``
context wraps every chunk but the last in ``accelerator.no_sync`` (DDP, FSDP) and tells DeepSpeed
where the accumulation boundary is, so gradients are reduced once per step.

Sharded engines (FSDP, ZeRO-3) gather a module's parameters whenever it runs, forward and
backward, so every process must run the same modules the same number of times. Two things in a
contrastive batch break that and are aligned here: processes may hold different numbers of rows
(so the number of chunks per role is agreed on, with one-row stand-ins where a process runs out),
and a chunk may hold images on one process and only text on another (the vision tower would run
on one side only): such chunks get one stand-in image row appended, whose embedding is dropped
and whose zero-weighted output still carries (zero) gradients through the vision tower.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from vlmbed import dist
from vlmbed.train.chunks import (
    best_groups,
    concat_rows,
    first_row,
    has_media,
    join_roles,
    length_groups,
    length_split_count,
    num_rows,
    split_by_sizes,
    take_rows,
)

Encode = Callable[[str, dict], torch.Tensor]  # (role, inputs) -> embeddings (n, d) or (n, k, d)
JOINED = "rows"  # the one "role" of a step whose encoder treats every role alike (``encode.role_free``)
LossFn = Callable[[dict], dict]  # {role: embeddings} -> {"loss": scalar, part: scalar, ...}
Backward = Callable[[torch.Tensor, bool], None]  # (surrogate loss, is last backward of the step)


class RandState:
    """CPU (and current CUDA device) RNG state, captured before a chunk's first forward."""

    def __init__(self) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.device = torch.cuda.current_device()
            self.cuda = torch.cuda.get_rng_state(self.device)

    @contextmanager
    def restored(self):
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


@dataclass
class StepOutput:
    parts: dict  # named loss parts (tensors, detached), "loss" included
    finite: bool  # False: the loss was not finite on some process; no gradient was computed


@dataclass
class Chunk:
    inputs: dict
    rows: int  # real rows (0: a stand-in that only keeps the processes' forwards aligned)
    extra: int = 0  # stand-in rows appended after the real ones
    index: list[int] | None = None  # the role's rows this chunk holds, in order (None: the next ``rows`` rows)

    def split(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(real rows' embeddings, the stand-ins' output scaled to zero, or None)."""
        idle = emb[self.rows :].sum() * 0.0 if emb.shape[0] > self.rows else None
        return emb[: self.rows], idle


SyncContext = Callable[[bool], object]  # is_last -> context manager around a chunk's forward + backward


def _no_context(_last: bool):
    return nullcontext()


def plan_chunks(inputs_by_role: dict, chunk_size: int | None, image_stand_in: dict | None = None,
                image_token_id: int | None = None, adapter=None, counts: dict | None = None,
                cap: int | None = None) -> dict[str, list[Chunk]]:
    """Chunks per role, with the same count (and the same vision-tower use) on every process.

    A role is cut into ``ceil(max rows over processes / chunk_size)`` near-equal chunks (one chunk
    when ``chunk_size`` is None), of rows sorted by length where that pads notably less (mixed lengths); or,
    with ``counts``, ``counts[role]`` forwards (the same on every process) cut from the length-sorted rows
    where that pads the fewest slots, at most ``cap`` rows each. ``image_stand_in``: processor inputs of one
    small image, appended to
    a chunk that has no image where another process's chunk has one. ``adapter``: the family adapter that
    knows how the inputs lay out images (None: the one whose layout the inputs have).
    """
    roles = list(inputs_by_role)
    rows = [num_rows(inputs_by_role[r]) if inputs_by_role[r] is not None else 0 for r in roles]
    most = dist.max_across(rows)
    spare = next((v for v in inputs_by_role.values() if v is not None and num_rows(v) > 0), None)
    out: dict[str, list[Chunk]] = {}
    for role, n, top in zip(roles, rows, most, strict=True):
        if top == 0:
            continue
        k = counts[role] if counts else math.ceil(top / chunk_size) if chunk_size else 1
        if counts and k > 1 and n:  # the best cut of length-sorted rows into k forwards (of at most cap rows)
            groups = best_groups(inputs_by_role[role], k, cap)
            sizes = [len(g) for g in groups] + [0] * (k - len(groups))
        else:
            sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
            groups = length_groups(inputs_by_role[role], [s for s in sizes if s]) if k > 1 and n else None
        if k == 1 and n:  # the whole role in one forward: no need to cut anything
            real = [inputs_by_role[role]]
        elif groups is not None:
            real = take_rows(inputs_by_role[role], groups, image_token_id, adapter=adapter)
        else:
            real = split_by_sizes(inputs_by_role[role], [s for s in sizes if s], image_token_id,
                                  adapter=adapter) if n else []
        out[role] = [Chunk(c, num_rows(c), index=groups[i] if groups else None) for i, c in enumerate(real)]
        out[role] += [Chunk(first_row(inputs_by_role[role] if n else spare, image_token_id, adapter=adapter), 0)
                      for s in sizes if not s]
    if image_stand_in is not None and dist.is_distributed():
        flat = [c for role in out for c in out[role]]
        anywhere = dist.max_across([int(has_media(c.inputs, adapter=adapter)) for c in flat])
        for c, needed in zip(flat, anywhere, strict=True):
            if needed and not has_media(c.inputs, adapter=adapter):
                c.inputs, c.extra = concat_rows(c.inputs, image_stand_in, adapter=adapter), num_rows(image_stand_in)
    return out


@dataclass
class GradCache:
    """Chunked encoding with cached representation gradients. ``chunk_size`` rows per forward."""

    chunk_size: int | None = None
    image_token_id: int | None = None
    image_stand_in: dict | None = None
    adapter: object | None = None  # the family adapter (how inputs lay out images); None: inferred from inputs
    # rows per gradient-free forward (stage 1); None or not above chunk_size: the replay's chunks. Set it only
    # when no dropout is active (the replay then cannot restore stage 1's random draws chunk by chunk)
    embed_chunk_size: int | None = None

    def chunks(self, inputs_by_role: dict) -> dict[str, list[Chunk]]:
        return plan_chunks(inputs_by_role, self.chunk_size, self.image_stand_in, self.image_token_id, self.adapter)

    def step(self, encode: Encode, inputs_by_role: dict, loss_fn: LossFn, backward: Backward,
             sync: SyncContext = _no_context) -> StepOutput:
        """One optimisation step's forward and backward; gradients accumulate in the parameters."""
        inputs_by_role, spans = joined_rows(encode, inputs_by_role, self.adapter)
        inputs_by_role = with_positions(encode, inputs_by_role)  # once here, read by stage 1 and the replay
        chunks = self.chunks(inputs_by_role)
        merged = bool(self.chunk_size and self.embed_chunk_size and self.embed_chunk_size > self.chunk_size)
        first = plan_chunks(inputs_by_role, None, self.image_stand_in, self.image_token_id, self.adapter,
                            counts=forward_counts(inputs_by_role, self.embed_chunk_size),
                            cap=self.embed_chunk_size) if merged else chunks
        reps, states = self.embed(encode, first)
        parts = loss_fn(by_role(reps, spans))
        loss = parts["loss"]
        if not finite_everywhere(loss):
            return StepOutput({k: v.detach() for k, v in parts.items()}, finite=False)
        roles = list(reps)
        grads = torch.autograd.grad(loss, [reps[r] for r in roles], allow_unused=True)
        cached = {r: (g if g is not None else torch.zeros_like(reps[r])) for r, g in zip(roles, grads, strict=True)}
        self.replay(encode, chunks, None if merged else states, cached, backward, sync)
        return StepOutput({k: v.detach() for k, v in parts.items()}, finite=True)

    def embed(self, encode: Encode, chunks: dict[str, list[Chunk]]) -> tuple[dict, dict]:
        """Stage 1: embeddings of every chunk without a graph, as leaves that will receive gradients."""
        reps, states = {}, {}
        for role, role_chunks in chunks.items():
            outs, role_states = [], []
            for chunk in role_chunks:
                role_states.append(RandState())
                with torch.no_grad():
                    emb, _ = chunk.split(encode(role, chunk.inputs))
                if chunk.rows:
                    outs.append(emb)
            if outs:
                rows = in_row_order(torch.cat(outs, dim=0), role_chunks)  # (n, d) or (n, k, d)
                reps[role] = rows.detach().requires_grad_(True)
            states[role] = role_states
        return reps, states

    def replay(self, encode: Encode, chunks: dict, states: dict | None, cached: dict, backward: Backward,
               sync: SyncContext = _no_context) -> None:
        """Stage 3: re-embed each chunk with a graph and backpropagate its cached gradient (``states``: the
        RNG state of each chunk's stage-1 forward; None when stage 1 cut the batch otherwise)."""
        order = [(role, i) for role in chunks for i in range(len(chunks[role]))]
        starts = dict.fromkeys(chunks, 0)
        for n, (role, i) in enumerate(order):
            chunk, last = chunks[role][i], n == len(order) - 1
            with sync(last):
                with states[role][i].restored() if states is not None else nullcontext():
                    emb, idle = chunk.split(encode(role, chunk.inputs))  # (c, d) or (c, k, d)
                surrogate = emb.sum() * 0.0
                if chunk.rows:
                    grad = (cached[role][starts[role] : starts[role] + chunk.rows] if chunk.index is None
                            else cached[role][torch.tensor(chunk.index, device=emb.device)]).to(emb.dtype)
                    starts[role] += chunk.rows
                    surrogate = (emb * grad).sum()  # d surrogate / d theta = (d emb / d theta)^T grad
                backward(surrogate if idle is None else surrogate + idle, last)


def in_row_order(rows: torch.Tensor, role_chunks: list[Chunk]) -> torch.Tensor:
    """A role's embeddings, concatenated in chunk order, put back in the batch's row order (chunks of
    length-sorted rows carry their row ``index``; contiguous chunks are in order already)."""
    if all(c.index is None for c in role_chunks):
        return rows
    order = torch.tensor([i for c in role_chunks if c.rows for i in c.index], device=rows.device)
    return rows[torch.argsort(order)]


def has_active_dropout(model: torch.nn.Module) -> bool:
    """Whether a training forward draws random numbers: a dropout module with p > 0 (LoRA's included) or an
    attention module with a non-zero ``attention_dropout`` (transformers' attention functions apply it)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        p = getattr(module, "attention_dropout", 0.0)
        if isinstance(p, float) and p > 0:
            return True
    return False


def embed_chunk_size(setting: int | str | None, chunk_size: int | None, model: torch.nn.Module) -> int | None:
    """Rows per gradient-free forward for ``train.gradcache_embed_chunk``: ``auto`` = 4 x the chunk, an int as
    given, None = the chunk; the chunk whenever dropout is active (see :class:`GradCache`)."""
    if not chunk_size or setting is None or has_active_dropout(model):
        return None
    return 4 * chunk_size if setting == "auto" else int(setting)


def finite_everywhere(loss: torch.Tensor) -> bool:
    """Every process agrees, so that all of them skip a non-finite step together."""
    return not dist.any_true(not bool(torch.isfinite(loss.detach()).all()))


def full_batch_step(encode: Encode, inputs_by_role: dict, loss_fn: LossFn, backward: Backward,
                    sync: SyncContext = _no_context, image_stand_in: dict | None = None, adapter=None,
                    image_token_id: int | None = None) -> StepOutput:
    """The same contract without GradCache: every forward with a graph, one backward.

    An encoder that treats every role alike (``encode.role_free``) gets every role's rows as one batch. With
    ``image_token_id`` (which rows own which images, for families that need it to cut a batch), rows of mixed
    lengths run as a few forwards of length-sorted rows when that pads notably fewer token slots
    (:func:`~vlmbed.train.chunks.length_split_count`; the count agreed on by every process); the embeddings
    are put back in row order, so the loss and gradients are the one-forward ones. Without it, one forward
    per role.
    """
    inputs_by_role, spans = joined_rows(encode, inputs_by_role, adapter)
    counts = forward_counts(inputs_by_role, None) if image_token_id is not None and not packed(encode, inputs_by_role) \
        else None
    if counts and any(k > 1 for k in counts.values()):
        inputs_by_role = with_positions(encode, inputs_by_role)  # once, read by each length-sorted forward
    chunks = plan_chunks(inputs_by_role, None, image_stand_in, image_token_id, adapter=adapter, counts=counts)
    with sync(True):
        reps, idle = {}, []
        for role, role_chunks in chunks.items():
            outs = []
            for chunk in role_chunks:
                emb, extra = chunk.split(encode(role, chunk.inputs))
                idle.append(extra if chunk.rows else emb.sum() * 0.0)
                if chunk.rows:
                    outs.append(emb)
            if outs:
                reps[role] = in_row_order(torch.cat(outs, dim=0), role_chunks)
        parts = loss_fn(by_role(reps, spans))
        extra = [x for x in idle if x is not None]
        loss = parts["loss"] + sum(extra) if extra else parts["loss"]
        if not finite_everywhere(loss):
            return StepOutput({k: v.detach() for k, v in parts.items()}, finite=False)
        backward(loss, True)
    return StepOutput({k: v.detach() for k, v in parts.items()}, finite=True)


def packed(encode: Encode, inputs_by_role: dict) -> bool:
    """Whether the encoder packs every role's rows into shared sequences (``encode.packs``), so that cutting
    them into length-sorted forwards would save nothing; agreed over processes (all cut, or none)."""
    packs = getattr(encode, "packs", None)
    local = packs is not None and all(v is None or packs(v) for v in inputs_by_role.values())
    return not dist.any_true(not local)


def with_positions(encode: Encode, inputs_by_role: dict) -> dict:
    """Each role's inputs with their rows' position ids computed once (``encode.positions``: the model's
    :meth:`~vlmbed.models.embedder.Embedder.with_position_ids`), so that every forward of rows cut from them
    reads them; the inputs as they are for an encoder without it."""
    add = getattr(encode, "positions", None)
    if add is None:
        return inputs_by_role
    return {role: add(v) if v is not None and num_rows(v) else v for role, v in inputs_by_role.items()}


def joined_rows(encode: Encode, inputs_by_role: dict, adapter=None) -> tuple[dict, dict | None]:
    """``({JOINED: every role's rows}, row span per role)`` for an encoder that treats every role alike
    (``encode.role_free``) where the roles can be joined; else the inputs as they are and None."""
    joined = join_roles(inputs_by_role, adapter) if getattr(encode, "role_free", False) else None
    return ({JOINED: joined[0]}, joined[1]) if joined is not None else (inputs_by_role, None)


def by_role(reps: dict, spans: dict | None) -> dict:
    """Embeddings per role: the joined rows cut back into the roles' spans (views: gradients reach the rows)."""
    return {role: reps[JOINED][span] for role, span in spans.items()} if spans is not None else reps


def forward_counts(inputs_by_role: dict, rows_per_forward: int | None) -> dict[str, int]:
    """Forwards per role, agreed over processes: enough for ``rows_per_forward`` (None: no bound), more where
    length-sorted groups pad notably fewer slots (:func:`~vlmbed.train.chunks.length_split_count`)."""
    local = [max(math.ceil(num_rows(v) / rows_per_forward) if rows_per_forward else 1,
                 length_split_count(v, cap=rows_per_forward)) if v is not None and num_rows(v) else 1
             for v in inputs_by_role.values()]
    return dict(zip(inputs_by_role, dist.max_across(local), strict=True))


def image_stand_in(encoder) -> dict:
    """Processor inputs of one small blank image (the stand-in row that keeps the vision tower aligned)."""
    from PIL import Image

    from vlmbed.types import Item

    return encoder([Item(image=Image.new("RGB", (56, 56), "white"), source="vlmbed stand-in")], "document")
