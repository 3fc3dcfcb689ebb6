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
at the end of the epoch, so few examples are dropped.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vlmbed.types import Example, Item

ROLES = ("query", "positive", "negatives")
THRESHOLDS = np.array(sorted({32 * int(1.3**i) for i in range(100)}), dtype=np.float64)


# ----------------------------------------------------------------------------- keys and costs


def group_hash(key: str) -> int:
    """A stable int64 of a group key (equal on every process, unlike per-batch group numbers)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "little", signed=True)


@dataclass
class CostModel:
    """Per-sequence cost from the tokenizer and the image processor (no image decoding)."""

    encoder: object  # vlmbed.data.collate.ItemEncoder
    kind: str = "moca"  # moca | tokens

    def __post_init__(self) -> None:
        proc = self.encoder.processor
        self.tokenizer = proc.tokenizer
        self.image_processor = getattr(proc, "image_processor", None)
        self.merge = int(getattr(self.image_processor, "merge_size", 1) or 1)
        self.placeholder = len(self.tokenizer(self.encoder.image_placeholder, add_special_tokens=False)["input_ids"])

    def image_tokens(self, item: Item) -> int:
        width, height = image_size(item)
        if self.image_processor is None or not hasattr(self.image_processor, "get_number_of_image_patches"):
            return math.ceil(height / 28) * math.ceil(width / 28)  # MoCa's estimate
        return self.image_processor.get_number_of_image_patches(height, width, {}) // (self.merge**2)

    def __call__(self, item: Item, role: str) -> float:
        text = self.encoder.format(item, role)
        n_text = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        if not item.has_image:
            return float(n_text)
        n_text -= 1  # the image pad token, replaced by the image's tokens
        img = self.image_tokens(item)
        return float(n_text + img) if self.kind == "tokens" else float(n_text + 4 * img + 2)

    def fingerprint(self) -> str:
        t = self.encoder.templates
        return f"{self.kind}|{len(self.tokenizer)}|{self.merge}|{json.dumps(t, sort_keys=True)}|" \
               f"{self.encoder.append_eos}|{self.encoder.max_text_tokens}"


def image_size(item: Item) -> tuple[int, int]:
    """(width, height) from the header only; unreadable images fail as they would in training."""
    import io

    from PIL import Image

    if hasattr(item.image, "size"):
        return item.image.size
    try:
        with Image.open(io.BytesIO(item.image) if isinstance(item.image, bytes) else item.image) as im:
            return im.size
    except (OSError, SyntaxError, ValueError):
        from vlmbed.data.images import open_image

        return open_image(item.image, source=item.source).size


def example_costs(examples: Sequence[Example], cost: CostModel, num_negatives: int | None = None,
                  cache_dir: str | Path | None = None) -> np.ndarray:
    """(n, 4) array: query cost, positive cost, largest negative cost, number of negatives.

    Cached in ``cache_dir`` under a hash of every example's content and the cost settings, so a
    large mixture is measured once.
    """
    path = None
    if cache_dir is not None:
        h = hashlib.sha1(cost.fingerprint().encode())
        h.update(str(num_negatives).encode())
        for ex in examples:
            h.update(ex.query.key().encode())
            h.update(ex.positive.key().encode())
            h.update("".join(n.key() for n in _negs(ex, num_negatives)).encode())
        path = Path(cache_dir) / f"costs-{h.hexdigest()[:20]}.npy"
        if path.exists():
            return np.load(path)
    out = np.zeros((len(examples), 4), dtype=np.float64)
    memo: dict[tuple[str, str], float] = {}

    def one(item: Item, role: str) -> float:
        key = (item.key(), role)
        if key not in memo:
            memo[key] = cost(item, role)
        return memo[key]

    for i, ex in enumerate(examples):
        negs = _negs(ex, num_negatives)
        out[i] = (one(ex.query, "query"), one(ex.positive, "document"),
                  max((one(n, "document") for n in negs), default=0.0), len(negs))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, out)
        tmp.replace(path)
    return out


def _negs(ex: Example, k: int | None) -> list[Item]:
    return ex.negatives if k is None else ex.negatives[:k]


def padded_cost(costs: np.ndarray) -> float:
    """Cost of one padded micro-batch of examples with ``costs`` rows (k, 4)."""
    if len(costs) == 0:
        return 0.0
    k = len(costs)
    return float(k * costs[:, 0].max() + k * costs[:, 1].max() + costs[:, 3].sum() * costs[:, 2].max())


def padding_waste(batches: list[list[int]], lengths: np.ndarray) -> float:
    """Fraction of padded positions that are padding, over batches (``lengths``: (n, 4) in tokens)."""
    padded = sum(padded_cost(lengths[b]) for b in batches)
    real = sum(float(lengths[b, 0].sum() + lengths[b, 1].sum() + (lengths[b, 2] * lengths[b, 3]).sum())
               for b in batches)
    return 1.0 - real / padded if padded else 0.0


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
        per_group = {name: self._group_batches(np.array(members), self._rng(epoch, gi + 1))
                     for gi, (name, members) in enumerate(sorted(self.groups.items()))}
        if self.spec.task_weights:
            return self._weighted_batches(per_group, epoch, rng)
        batches = [b for _, bs in sorted(per_group.items()) for b in bs]
        out = [batches[i] for i in rng.permutation(len(batches))]
        if not out:
            raise ValueError(self._too_few())
        return out

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
                streams[t] = self._group_batches(members, self._rng(epoch, 7919, d, rounds[t]))
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
        what = (f"{self.spec.batch_size} per process" if self.spec.mode == "fixed"
                else f"token budget {self.spec.max_tokens}")
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
