"""Batch plans for contrastive training: fixed-size or token-budget batches, task-homogeneous batches,
weighted task mixtures, unique positives; resumable at any batch.

A plan is a pure function of (data, seed, epoch): every process computes the same list of *global*
batches, each made of one batch per process, and takes its own. A batch is identified by
(epoch, index), carried through the data loader with every example, so the loop always knows the
position of the last batch it actually trained on (whatever the loader prefetched) and resume
continues there without replaying or re-reading earlier batches.

Token budget (MoCa, METHODS.md 1.3.6): every example gets a cost per role (query, positive,
negatives), computed once from the tokenizer and image sizes and cached on disk. ``moca`` cost of
a sequence is ``text_tokens + 4 * image_tokens + 2 * images``; ``tokens`` is its length. Examples are
grouped into buckets of similar cost per role (thresholds ``32 * int(1.3 ** i)``, as MoCa), and a
device's micro-batch takes examples of one bucket while its *padded* cost, the sum over roles of
``rows * longest row``, stays within ``max_tokens``. Bucket remainders are pooled and packed by cost
at the end of the epoch, so few examples are dropped. Costs are clipped at ``model.max_length``.

Task-homogeneous batches (``homogeneous``, or ``task_weights``): every global batch comes from one
task. A task too small to fill one global batch is repeated to fill exactly one per epoch, with a
printed note naming it (never dropped silently); a task's last partial batch waits for the next
epoch's shuffle, as in fixed batching.

Partial batches: examples that do not fill a last global batch (fixed: 20 examples at batch 8 on one
process leave 4; token budget: what the leftover packing cannot fill) are left out of that epoch, so
every batch is full-sized and every process gets the same number of batches (a smaller last batch would
also give its queries fewer in-batch negatives). The count is printed once per plan (``note: 4 of 20
examples are not in epoch 0's batches ...``) and kept in ``BatchPlan.left_out``; each epoch's shuffle
leaves out different examples. Weighted mixtures (``task_weights``) draw by weight, so coverage there
is the mixture's and is not noted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vlmbed.data.costs import CostModel, example_costs, image_size, padded_cost, padding_waste

# costs live in their own module; re-exported here, where the planner's users look for them
from vlmbed.types import CONTRASTIVE_ROLES, Example

__all__ = ["ROLES", "THRESHOLDS", "BatchPlan", "BatchingSpec", "CostModel", "PlanSampler", "PositionedDataset",
           "bucket_of", "example_costs", "group_hash", "image_size", "pack", "padded_cost", "padding_waste"]

ROLES = CONTRASTIVE_ROLES
THRESHOLDS = np.array(sorted({32 * int(1.3**i) for i in range(100)}), dtype=np.float64)


# ----------------------------------------------------------------------------- keys


def group_hash(key: str) -> int:
    """A stable int64 of a group key (equal on every process, unlike per-batch group numbers)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "little", signed=True)


# ----------------------------------------------------------------------------- the plan


@dataclass
class BatchingSpec:
    batch_size: int = 32  # per process (fixed mode)
    mode: str = "fixed"  # fixed | token_budget
    max_tokens: int = 12800  # per process micro-batch (token_budget mode)
    homogeneous: bool = False
    unique_positives: bool = False
    task_weights: dict[str, float] | None = None


class _GlobalBatch:
    """One global batch being filled: ``world`` per-process batches, filled in process order."""

    def __init__(self, world: int, spec: BatchingSpec, costs: np.ndarray | None):
        self.parts: list[list[int]] = [[] for _ in range(world)]
        self.r = 0
        self.keys: set = set()
        self.spec, self.costs = spec, costs

    @property
    def full(self) -> bool:
        return self.r >= len(self.parts)

    def fits(self, i: int) -> bool:
        if self.spec.mode == "fixed":
            return True
        part = self.parts[self.r]
        return not part or padded_cost(self.costs[part + [i]]) <= self.spec.max_tokens

    def add(self, i: int, key) -> bool:
        """Place example ``i``; False when its key is already in this global batch."""
        if key is not None and key in self.keys:
            return False
        if not self.fits(i):
            self.r += 1
            if self.full:
                return False
        self.parts[self.r].append(i)
        if key is not None:
            self.keys.add(key)
        if self.spec.mode == "fixed" and len(self.parts[self.r]) == self.spec.batch_size:
            self.r += 1
        return True


def pack(order: Sequence[int], world: int, spec: BatchingSpec, costs: np.ndarray | None,
         keys: Sequence | None) -> tuple[list[list[list[int]]], list[int]]:
    """Greedy: each example goes to the oldest open global batch that accepts it (unique keys, budget).

    Returns the full global batches and the examples left in unfinished ones.
    """
    done: list = []
    open_: list[_GlobalBatch] = []
    for i in order:
        key = keys[i] if keys is not None else None
        if not any(gb.add(i, key) for gb in open_):
            gb = _GlobalBatch(world, spec, costs)
            gb.add(i, key)
            open_.append(gb)
        if any(gb.full for gb in open_):
            done.extend(gb.parts for gb in open_ if gb.full)
            open_ = [gb for gb in open_ if not gb.full]
    rest = [i for gb in open_ for part in gb.parts for i in part]
    return done, rest


def bucket_of(costs: np.ndarray) -> np.ndarray:
    """Bucket id per example: MoCa's cost threshold of the query and of its longest document."""
    q = np.searchsorted(THRESHOLDS, costs[:, 0], side="left")  # (n,)
    d = np.searchsorted(THRESHOLDS, np.maximum(costs[:, 1], costs[:, 2]), side="left")  # (n,)
    return d * 1000 + q


class BatchPlan:
    """Global batches for one epoch at a time; every process takes ``batch[rank]``.

    ``tasks`` (n,) names each example's source task, ``keys`` (n,) its group key (for unique
    positives), ``costs`` (n, 4) its per-role costs (token-budget mode).
    """

    def __init__(self, n: int, spec: BatchingSpec, world: int = 1, rank: int = 0, seed: int = 0,
                 tasks: Sequence[str] | None = None, keys: Sequence | None = None, costs: np.ndarray | None = None):
        if spec.mode == "token_budget" and costs is None:
            raise ValueError("token-budget batching needs per-example costs")
        self.n, self.spec, self.world, self.rank, self.seed = n, spec, world, rank, seed
        self.tasks = list(tasks) if tasks is not None else [""] * n
        self.keys = list(keys) if keys is not None and spec.unique_positives else None
        self.costs = costs
        groups: dict[str, list[int]] = {}
        for i, t in enumerate(self.tasks):
            groups.setdefault(t if spec.homogeneous or spec.task_weights else "", []).append(i)
        self.groups = groups
        if spec.task_weights:
            unknown = sorted(set(spec.task_weights) - set(groups))
            if unknown:
                raise ValueError(f"data.batching.task_weights names unknown task(s) {unknown}; tasks: {sorted(groups)}")
        self._cache: tuple[int, list] | None = None
        self.notes: dict[str, str] = {}  # task -> why it was repeated (printed once, by rank 0)
        self.left_out: dict[int, int] = {}  # epoch -> examples in no batch (partial last batches)

    def epoch(self, epoch: int) -> list[list[list[int]]]:
        """The global batches of ``epoch`` (cached for the current one)."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._build(epoch))
        return self._cache[1]

    def __len__(self) -> int:
        return len(self.epoch(0))

    def _rng(self, epoch: int, *salt: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, *salt])

    def _build(self, epoch: int) -> list[list[list[int]]]:
        rng = self._rng(epoch)
        if self.spec.task_weights and not self.spec.homogeneous:
            return self._weighted_examples(epoch, rng)
        per_group = {name: self._task_batches(name, np.array(members), self._rng(epoch, gi + 1))
                     for gi, (name, members) in enumerate(sorted(self.groups.items()))}
        if self.spec.task_weights:
            return self._weighted_batches(per_group, epoch, rng)
        batches = [b for _, bs in sorted(per_group.items()) for b in bs]
        out = [batches[i] for i in rng.permutation(len(batches))]
        if not out:
            raise ValueError(self._too_few())
        self._note_left_out(epoch, out)
        return out

    def _note_left_out(self, epoch: int, batches: list) -> None:
        """Count the examples no batch of ``epoch`` holds (partial last batches); print it once per plan."""
        left = self.n - len({i for gb in batches for part in gb for i in part})
        self.left_out[epoch] = left
        if left and "(left out)" not in self.notes:
            self.notes["(left out)"] = (
                f"{left} of {self.n} examples are not in epoch {epoch}'s batches: they do not fill a batch of "
                f"{self._batch_words()} x {self.world} process(es) (the last partial batch is dropped, so every "
                "batch is full and every process gets the same number; the next epoch's shuffle leaves out "
                "others). Lower data.batch_size or add examples to use them all in one epoch")
            if self.rank == 0:
                print(f"note: {self.notes['(left out)']}", flush=True)

    def _task_batches(self, name: str, members: np.ndarray, rng) -> list:
        """One task's batches (or all examples', when batches do not follow tasks).

        A task too small for one global batch is not dropped: its examples are repeated, in a shuffled
        cycle, to fill exactly one global batch per epoch (MoCa pads each subset by repetition), and a
        note naming it is printed once. Repeats share their group key, so the loss never uses an
        example's copy as its negative. If even repetition cannot fill a batch (unique positives with
        too few distinct positives) the error names the task.
        """
        batches = self._group_batches(members, rng)
        if batches or not (self.spec.homogeneous or self.spec.task_weights):
            return batches
        batch = self._repeated_batch(members, rng)
        if batch is None:
            extra = " distinct positives (data.batching.unique_positives)" if self.keys is not None else " examples"
            raise ValueError(f"task {name!r} has too few{extra} ({len(members)} examples) for one batch of "
                             f"{self._batch_words()} x {self.world} process(es), even repeated; lower "
                             "data.batch_size, turn off unique_positives, or drop the task")
        if name not in self.notes:
            self.notes[name] = (f"task {name!r} has {len(members)} examples, fewer than one global batch of "
                                f"{self._batch_words()} x {self.world} process(es): repeated to fill one batch "
                                "per epoch")
            if self.rank == 0:
                print(f"note: {self.notes[name]}", flush=True)
        return [batch]

    def _repeated_batch(self, members: np.ndarray, rng) -> list | None:
        """The first global batch of a shuffled cycle of ``members`` (None if the cycle never fills one)."""
        order = members[rng.permutation(len(members))].tolist()
        if self.spec.mode == "fixed":
            counts = [self.spec.batch_size * self.world]
        else:  # a part is full when the next example overflows its budget; costs are >= 1 token each
            cap = self.world * (self.spec.max_tokens + 1) + len(order)
            counts = [min(cap, len(order) * 2**k) for k in range(1, 64) if len(order) * 2 ** (k - 1) < cap]
        for count in counts:
            cycle = (order * -(-count // len(order)))[:count]
            done, _ = pack(cycle, self.world, self.spec, self.costs, self.keys)
            if done:
                return done[0]
        return None

    def _batch_words(self) -> str:
        return (f"{self.spec.batch_size} per process" if self.spec.mode == "fixed"
                else f"token budget {self.spec.max_tokens}")

    def _group_batches(self, members: np.ndarray, rng) -> list:
        order = members[rng.permutation(len(members))].tolist()
        if self.spec.mode == "fixed":
            done, _ = pack(order, self.world, self.spec, None, self.keys)
            return done
        buckets: dict[int, list[int]] = {}
        ids = bucket_of(self.costs[order]).tolist()
        bucket_ids = dict(zip(order, ids, strict=True))
        for i, b in zip(order, ids, strict=True):
            buckets.setdefault(b, []).append(i)
        done, rest = [], []
        for b in sorted(buckets):
            got, left = pack(buckets[b], self.world, self.spec, self.costs, self.keys)
            done.extend(got)
            rest.extend(left)
        rest.sort(key=lambda i: (bucket_ids[i], *self.costs[i, :3]))  # leftovers: pack neighbours by cost
        got, _ = pack(rest, self.world, self.spec, self.costs, self.keys)
        return done + got

    def _weighted_batches(self, per_group: dict, epoch: int, rng) -> list:
        """Task per global batch drawn by weight; a task's batches cycle (re-planned) when used up."""
        names = [t for t in sorted(per_group) if per_group[t] and self.spec.task_weights.get(t, 0) > 0]
        if not names:
            raise ValueError(self._too_few())
        w = np.array([self.spec.task_weights.get(t, 0.0) for t in names])
        total = sum(len(per_group[t]) for t in per_group)
        draws = rng.choice(len(names), size=total, p=w / w.sum())
        streams = {t: list(per_group[t]) for t in names}
        used = dict.fromkeys(names, 0)
        rounds = dict.fromkeys(names, 0)
        out = []
        for d in draws.tolist():
            t = names[d]
            if used[t] == len(streams[t]):
                rounds[t] += 1
                members = np.array(self.groups[t])
                streams[t] = self._task_batches(t, members, self._rng(epoch, 7919, d, rounds[t]))
                used[t] = 0
            out.append(streams[t][used[t]])
            used[t] += 1
        return out

    def _weighted_examples(self, epoch: int, rng) -> list:
        """Mixed batches whose examples come from tasks drawn by weight (each task's examples cycle)."""
        names = [t for t in sorted(self.groups) if self.spec.task_weights.get(t, 0) > 0]
        w = np.array([self.spec.task_weights[t] for t in names])
        draws = rng.choice(len(names), size=self.n, p=w / w.sum())
        perms = {t: self._rng(epoch, 104729, k).permutation(self.groups[t]).tolist() for k, t in enumerate(names)}
        pos = dict.fromkeys(names, 0)
        stream = []
        for d in draws.tolist():
            t = names[d]
            stream.append(perms[t][pos[t] % len(perms[t])])
            pos[t] += 1
        if self.spec.mode == "fixed":
            done, _ = pack(stream, self.world, self.spec, None, self.keys)
        else:
            done = self._group_batches(np.array(stream), self._rng(epoch, 15485863))
        if not done:
            raise ValueError(self._too_few())
        return done

    def _too_few(self) -> str:
        what = self._batch_words()
        extra = " with unique positives (data.batching.unique_positives)" if self.keys is not None else ""
        return (f"{self.n} examples cannot form one batch of {what} x {self.world} process(es){extra}; "
                "lower data.batch_size or add data")


class PlanSampler(torch.utils.data.Sampler):
    """Batch sampler over a :class:`BatchPlan`, endless over epochs, starting at any (epoch, batch).

    Yields this process's batches as lists of ``(epoch, batch, index)`` so that the position of every
    batch travels with it through the data loader (see :class:`PositionedDataset`).
    """

    def __init__(self, plan: BatchPlan, epoch: int = 0, batch: int = 0):
        self.plan = plan
        self.start = (epoch, batch)

    def set_start(self, epoch: int, batch: int) -> None:
        self.start = (epoch, batch)

    def __iter__(self):
        epoch, b = self.start
        while True:
            batches = self.plan.epoch(epoch)
            for j in range(b, len(batches)):
                yield [(epoch, j, i) for i in batches[j][self.plan.rank]]
            epoch, b = epoch + 1, 0

    def __len__(self) -> int:
        return len(self.plan)


class PositionedDataset(torch.utils.data.Dataset):
    """Examples addressed by ``(epoch, batch, index)``; returns ``(epoch, batch, example)``."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, key):
        epoch, batch, i = key
        return epoch, batch, self.examples[i]
