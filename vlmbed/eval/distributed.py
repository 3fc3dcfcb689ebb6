"""Process group view for evaluation: one process, or all processes of an ``accelerate launch``.

Evaluation shards *encoding* across processes and gathers the vectors on every round; scoring and
writing happen on the main process, whose results are then broadcast. Nothing here is used when
a single process evaluates (the common case, and the case of a training run that evaluates on its
main process only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

_OWNED = False  # evaluation set the process group up itself (so later evaluations shard too)


@dataclass
class EvalDist:
    rank: int = 0
    world: int = 1

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        """``obj`` of the main process, on every process."""
        if not self.active:
            return obj
        import torch.distributed as td

        box = [obj if self.is_main else None]
        td.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather(self, obj) -> list:
        if not self.active:
            return [obj]
        import torch.distributed as td

        out = [None] * self.world
        td.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as td

            td.barrier()


def eval_dist(distributed: bool | None = None) -> EvalDist:
    """The process group to shard over.

    ``None`` (auto): shard when the script was started by ``accelerate launch`` / ``torchrun`` with
    several processes *and* the process group was not set up by someone else (evaluation then owns
    it, for this and later evaluations; a training run that already set one up and evaluates on its
    main process only is left alone). ``True``: shard
    over the launched processes, setting the group up if needed. ``False``: this process alone.
    """
    if distributed is False:
        return EvalDist()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return EvalDist()
    import torch.distributed as td

    global _OWNED
    if td.is_available() and td.is_initialized() and distributed is None and not _OWNED:
        return EvalDist()
    if not td.is_initialized():
        _state()  # sets up the process group from the launcher's environment (gloo on CPU, nccl on GPUs)
        _OWNED = True
    return EvalDist(rank=td.get_rank(), world=td.get_world_size())


def _cpu_only() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def _state():
    from accelerate import PartialState

    return PartialState(cpu=_cpu_only())


def device_for(dist: EvalDist):
    """The device this process should encode on (its GPU under a launcher, else cuda:0 or cpu)."""
    import torch

    if _cpu_only():
        return torch.device("cpu")
    return _state().device
