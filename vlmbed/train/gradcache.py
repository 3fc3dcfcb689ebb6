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

Works for one embedding per sequence (B, d) and several (B, k, d): the cache holds whatever the
encoder returns. Distributed engines see ordinary forward/backward calls: the caller's
``backward(surrogate, last)`` wraps every chunk but the last in ``accelerator.no_sync`` (DDP, FSDP)
and tells DeepSpeed where the accumulation boundary is, so gradients are reduced once per step
and ZeRO-2/3 and FSDP shard as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from vlmbed import dist
from vlmbed.train.chunks import first_row, num_rows, split_by_sizes

Encode = Callable[[str, dict], torch.Tensor]  # (role, inputs) -> embeddings (n, d) or (n, k, d)
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
    real: bool = True  # False: a one-row stand-in so that every process runs the same forwards


SyncContext = Callable[[bool], object]  # is_last -> context manager around a chunk's forward + backward


def _no_context(_last: bool):
    return nullcontext()


@dataclass
class GradCache:
    """Chunked encoding with cached representation gradients. ``chunk_size`` rows per forward.

    Every process runs the same number of forwards per role (sharded engines, FSDP and ZeRO-3,
    gather parameters in every forward, so the counts must match): a role is cut into
    ``ceil(max rows over processes / chunk_size)`` near-equal chunks, and a process with fewer rows
    than chunks (or none) runs one-row stand-ins whose gradient is zero.
    """

    chunk_size: int | None = None
    image_token_id: int | None = None

    def chunks(self, inputs_by_role: dict) -> dict[str, list[Chunk]]:
        roles = list(inputs_by_role)
        rows = [num_rows(inputs_by_role[r]) if inputs_by_role[r] is not None else 0 for r in roles]
        most = dist.max_across(rows)
        spare = next((v for v in inputs_by_role.values() if v is not None and num_rows(v) > 0), None)
        out = {}
        for role, n, top in zip(roles, rows, most, strict=True):
            k = 0 if top == 0 else (math.ceil(top / self.chunk_size) if self.chunk_size else 1)
            sizes = [n // k + (1 if i < n % k else 0) for i in range(k)]
            real = split_by_sizes(inputs_by_role[role], [s for s in sizes if s], self.image_token_id) if n else []
            stand_in = inputs_by_role[role] if n else spare
            fill = [Chunk(first_row(stand_in, self.image_token_id), real=False) for s in sizes if not s]
            if k:
                out[role] = [Chunk(c) for c in real] + fill
        return out

    def step(self, encode: Encode, inputs_by_role: dict, loss_fn: LossFn, backward: Backward,
             sync: SyncContext = _no_context) -> StepOutput:
        """One optimisation step's forward and backward; gradients accumulate in the parameters."""
        chunks = self.chunks(inputs_by_role)
        reps, states = self.embed(encode, chunks)
        parts = loss_fn(reps)
        loss = parts["loss"]
        if not _finite_everywhere(loss):
            return StepOutput({k: v.detach() for k, v in parts.items()}, finite=False)
        roles = list(reps)
        grads = torch.autograd.grad(loss, [reps[r] for r in roles], allow_unused=True)
        cached = {r: (g if g is not None else torch.zeros_like(reps[r])) for r, g in zip(roles, grads, strict=True)}
        self.replay(encode, chunks, states, cached, backward, sync)
        return StepOutput({k: v.detach() for k, v in parts.items()}, finite=True)

    def embed(self, encode: Encode, chunks: dict[str, list[Chunk]]) -> tuple[dict, dict]:
        """Stage 1: embeddings of every chunk without a graph, as leaves that will receive gradients."""
        reps, states = {}, {}
        for role, role_chunks in chunks.items():
            outs, role_states = [], []
            for chunk in role_chunks:
                role_states.append(RandState())
                with torch.no_grad():
                    emb = encode(role, chunk.inputs)
                if chunk.real:
                    outs.append(emb)
            if outs:
                reps[role] = torch.cat(outs, dim=0).detach().requires_grad_(True)  # (n, d) or (n, k, d)
            states[role] = role_states
        return reps, states

    def replay(self, encode: Encode, chunks: dict, states: dict, cached: dict, backward: Backward,
               sync: SyncContext = _no_context) -> None:
        """Stage 3: re-embed each chunk with a graph and backpropagate its cached gradient."""
        order = [(role, i) for role in chunks for i in range(len(chunks[role]))]
        starts = {role: 0 for role in chunks}
        for n, (role, i) in enumerate(order):
            chunk, last = chunks[role][i], n == len(order) - 1
            with sync(last):
                with states[role][i].restored():
                    emb = encode(role, chunk.inputs)  # (c, d) or (c, k, d)
                if chunk.real:
                    grad = cached[role][starts[role] : starts[role] + emb.shape[0]].to(emb.dtype)
                    starts[role] += emb.shape[0]
                    surrogate = (emb * grad).sum()  # d surrogate / d theta = (d emb / d theta)^T grad
                else:
                    surrogate = emb.sum() * 0.0  # a stand-in: takes part in the collectives, adds nothing
                backward(surrogate, last)


def _finite_everywhere(loss: torch.Tensor) -> bool:
    """Every process agrees, so that all of them skip a non-finite step together."""
    return not dist.any_true(not bool(torch.isfinite(loss.detach()).all()))


def full_batch_step(encode: Encode, inputs_by_role: dict, loss_fn: LossFn, backward: Backward,
                    sync: SyncContext = _no_context) -> StepOutput:
    """The same contract without GradCache: every role embedded with a graph, one backward.

    Roles that some process lacks (no hard negatives in its share) are run on a one-row stand-in
    with zero weight, so every process runs the same forwards.
    """
    roles = list(inputs_by_role)
    rows = [num_rows(inputs_by_role[r]) if inputs_by_role[r] is not None else 0 for r in roles]
    most = dist.max_across(rows)
    spare = next((v for v in inputs_by_role.values() if v is not None and num_rows(v) > 0), None)
    with sync(True):
        reps, idle = {}, None
        for role, n, top in zip(roles, rows, most, strict=True):
            if n:
                reps[role] = encode(role, inputs_by_role[role])
            elif top:
                stand_in = encode(role, first_row(spare))
                idle = stand_in.sum() * 0.0 if idle is None else idle + stand_in.sum() * 0.0
        parts = loss_fn(reps)
        loss = parts["loss"] if idle is None else parts["loss"] + idle
        if not _finite_everywhere(loss):
            return StepOutput({k: v.detach() for k, v in parts.items()}, finite=False)
        backward(loss, True)
    return StepOutput({k: v.detach() for k, v in parts.items()}, finite=True)
