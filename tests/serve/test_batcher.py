"""Dynamic batching: grouping, roles kept apart, bounded queue, error isolation, draining on close."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from vlmbed.serve.batcher import DynamicBatcher, QueueFull, ShuttingDown


class Recorder:
    """An encode_fn that records its batches; item i encodes to [i, len(role)]."""

    def __init__(self, delay: float = 0.0, fail_on=None):
        self.calls: list[tuple[list, str]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.threads: set[str] = set()

    def __call__(self, items, role):
        self.calls.append((list(items), role))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError(f"bad item {self.fail_on}")
        return np.array([[x, len(role)] for x in items], dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_rows():
    enc = Recorder(delay=0.02)

    async def main():
        batcher = DynamicBatcher(enc, max_batch_size=8, max_wait_ms=20)
        results = await asyncio.gather(*(batcher.submit([i, i + 100], "query") for i in range(8)))
        await batcher.close()
        return results

    results = run(main())
    for i, rows in enumerate(results):
        np.testing.assert_array_equal(rows[:, 0], [i, i + 100])
    assert max(len(items) for items, _ in enc.calls) == 8  # four requests of 2 items per batch
    assert len(enc.calls) < 8
    assert all(name.startswith("vlmbed-model") for name in enc.threads)


def test_roles_are_never_mixed_in_one_batch():
    enc = Recorder(delay=0.01)

    async def main():
        batcher = DynamicBatcher(enc, max_batch_size=16, max_wait_ms=20)
        jobs = [batcher.submit([i], "query" if i % 2 else "document") for i in range(10)]
        results = await asyncio.gather(*jobs)
        await batcher.close()
        return results

    results = run(main())
    for i, rows in enumerate(results):
        assert rows[0, 1] == len("query" if i % 2 else "document")
    for items, role in enc.calls:
        assert all((x % 2 == 1) == (role == "query") for x in items)


def test_batch_never_exceeds_max_size_and_big_requests_run_alone():
    enc = Recorder(delay=0.01)

    async def main():
        batcher = DynamicBatcher(enc, max_batch_size=4, max_wait_ms=10)
        await asyncio.gather(batcher.submit(list(range(10)), "query"), *(batcher.submit([i], "query")
                                                                        for i in range(20, 30)))
        await batcher.close()

    run(main())
    sizes = [len(items) for items, _ in enc.calls]
    assert 10 in sizes  # an oversize request is one call (encode batches it internally)
    assert all(s <= 4 for s in sizes if s != 10)


def test_full_queue_is_refused_not_crashed():
    enc = Recorder(delay=0.2)

    async def main():
        batcher = DynamicBatcher(enc, max_batch_size=1, max_wait_ms=0, max_queue=3)
        first = asyncio.ensure_future(batcher.submit([0], "query"))
        await asyncio.sleep(0.05)  # first is running; queue is empty
        queued = [asyncio.ensure_future(batcher.submit([i], "query")) for i in (1, 2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="queue is full"):
            await batcher.submit([4], "query")
        done = await asyncio.gather(first, *queued)
        await batcher.close()
        return done, batcher.stats.rejected

    done, rejected = run(main())
    assert [int(r[0, 0]) for r in done] == [0, 1, 2, 3] and rejected == 1


def test_a_failing_request_does_not_fail_its_batch_neighbours():
    enc = Recorder(delay=0.01, fail_on=13)

    async def main():
        batcher = DynamicBatcher(enc, max_batch_size=8, max_wait_ms=30)
        results = await asyncio.gather(*(batcher.submit([i], "query") for i in range(10, 16)),
                                       return_exceptions=True)
        await batcher.close()
        return results

    results = run(main())
    assert isinstance(results[3], ValueError) and "bad item 13" in str(results[3])
    assert [int(r[0, 0]) for i, r in enumerate(results) if i != 3] == [10, 11, 12, 14, 15]


def test_close_finishes_queued_work_and_refuses_new():
    enc = Recorder(delay=0.05)

    async def main():
        batcher = DynamicBatcher(enc, max_batch_size=2, max_wait_ms=0)
        jobs = [asyncio.ensure_future(batcher.submit([i], "query")) for i in range(6)]
        await asyncio.sleep(0.01)
        closing = asyncio.ensure_future(batcher.close())
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDown):
            await batcher.submit([99], "query")
        results = await asyncio.gather(*jobs)
        await closing
        return results

    results = run(main())
    assert [int(r[0, 0]) for r in results] == list(range(6))


def test_tuple_results_are_sliced_per_request():
    def enc(items, role):
        return np.array(items, dtype=np.float32)[:, None], np.array([len(str(x)) for x in items])

    async def main():
        batcher = DynamicBatcher(enc, max_batch_size=8, max_wait_ms=10)
        out = await asyncio.gather(batcher.submit([1, 22], "query"), batcher.submit([333], "query"))
        await batcher.close()
        return out

    (a_vec, a_tok), (b_vec, b_tok) = run(main())
    assert a_vec[:, 0].tolist() == [1, 22] and a_tok.tolist() == [1, 2]
    assert b_vec[:, 0].tolist() == [333] and b_tok.tolist() == [3]
