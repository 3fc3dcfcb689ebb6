"""Distributed helpers: gradient-carrying gathers, rank offsets, main-process checks.

Everything is asked at call time (``torch.distributed`` may be initialised after import), and every
function is a no-op on one process, so the same code runs on one CPU and on many GPUs.

Cross-device negatives: each process embeds its own share of the batch; the documents of every
process are gathered **with gradient** (``torch.distributed.nn.functional.all_gather``), so the
loss of process r also trains the encoders of the documents that came from process s. Backward
of the gather sums, on the owner, the gradients that every process computed for its rows. With
DDP averaging parameter gradients over W processes, each process's loss being a mean over its
own queries, the resulting gradient is exactly that of the mean loss over the concatenated batch
(``tests/test_dist.py`` checks this against one process).

Processes may hold different numbers of rows (token-budget batches, varying hard-negative
counts): gathers pad to the largest share and cut the padding off again.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as tdist


def use_cpu() -> bool:
    """No CUDA or MPS device: several processes (torchrun / accelerate launch) then run on CPU with gloo."""
    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def partial_state():
    """accelerate's process state, created the same way everywhere (CPU processes included)."""
    from accelerate import PartialState

    return PartialState(cpu=use_cpu())


def is_distributed() -> bool:
    return tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1


def world_size() -> int:
    return tdist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return tdist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    return rank() == 0


def _sizes(n: int, device) -> list[int]:
    """Rows held by every process, in rank order."""
    local = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(local) for _ in range(world_size())]
    tdist.all_gather(out, local)
    return [int(t.item()) for t in out]


def gather_sizes(n: int, device=None) -> list[int]:
    """Number of rows each process holds (``[n]`` on one process)."""
    if not is_distributed():
        return [n]
    return _sizes(n, device if device is not None else _comm_device())


def _comm_device() -> torch.device:
    backend = tdist.get_backend()
    if backend == "nccl" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _pad_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    if x.shape[0] == rows:
        return x
    pad = x.new_zeros((rows - x.shape[0], *x.shape[1:]))
    return torch.cat([x, pad], dim=0)


def all_gather_with_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` (n_r, ...) of every process along dim 0, in rank order, keeping the gradient.

    Gradients flowing into rows that came from process s are summed over processes and delivered
    to process s. ``sizes`` (rows per process) is computed when not given.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    device = _device_for(x)
    sizes = sizes if sizes is not None else _sizes(x.shape[0], device)
    padded = _pad_rows(x.to(device), max(sizes)).contiguous()  # (max_n, ...)
    with warnings.catch_warnings():  # deprecated in favour of a private API; kept while it works
        warnings.simplefilter("ignore", FutureWarning)
        parts = all_gather(padded)  # W x (max_n, ...), differentiable
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0).to(x.device)


def all_gather_no_grad(x: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``x`` of every process (labels, ids, masks): no gradient."""
    if not is_distributed():
        return x
    device = _device_for(x)
    sizes = sizes if sizes is not None else _sizes(x.shape[0], device)
    padded = _pad_rows(x.detach().to(device), max(sizes)).contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    tdist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0).to(x.device)


def _device_for(x: torch.Tensor) -> torch.device:
    comm = _comm_device()
    return x.device if x.device.type == comm.type else comm


def rank_offset(sizes: list[int], r: int | None = None) -> int:
    """Index of process ``r``'s first row among the gathered rows (sum of the earlier processes' rows)."""
    r = rank() if r is None else r
    return int(sum(sizes[:r]))


def any_true(flag: bool, device=None) -> bool:
    """True if ``flag`` is true on any process (every process gets the same answer)."""
    if not is_distributed():
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=device if device is not None else _comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_across(value: torch.Tensor) -> torch.Tensor:
    """Average a scalar over processes (for logging; no gradient)."""
    if not is_distributed():
        return value.detach()
    t = value.detach().float().reshape(1).to(_device_for(value))
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return (t / world_size()).reshape(())


def max_across(values: list[int]) -> list[int]:
    """Element-wise maximum of an integer list over processes."""
    if not is_distributed() or not values:
        return list(values)
    t = torch.tensor(values, dtype=torch.long, device=_comm_device())
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]
