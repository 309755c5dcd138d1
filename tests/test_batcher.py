"""Dynamic batching policy with an injected clock: size-triggered and delay-triggered batches."""

from __future__ import annotations

import numpy as np

from hitveto.serving.batcher import Batcher, Pending
from hitveto_client.protocol import EventKey


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def item(i: int, clock: FakeClock) -> Pending:
    return Pending(
        key=EventKey(run=1, pulse_id=i), region=np.zeros(1), sent_ns=0, received_ns=0, arrived_s=clock()
    )


def test_full_batch_is_due_at_once():
    clock = FakeClock()
    b = Batcher(max_batch=4, max_delay_ms=10, max_queue=100, clock=clock)
    for i in range(6):
        assert b.offer(item(i, clock))
    assert b.due_in() == 0.0
    assert [p.key.pulse_id for p in b.next_batch(0.01)] == [0, 1, 2, 3]


def test_partial_batch_waits_for_its_delay():
    clock = FakeClock()
    b = Batcher(max_batch=4, max_delay_ms=10, max_queue=100, clock=clock)
    b.offer(item(0, clock))
    clock.now += 0.004
    assert abs(b.due_in() - 0.006) < 1e-9
    clock.now += 0.006
    assert b.due_in() == 0.0 and len(b.next_batch(0.01)) == 1


def test_empty_queue_times_out_with_no_batch():
    b = Batcher(max_batch=4, max_delay_ms=1, max_queue=10)
    assert b.due_in() is None and b.next_batch(0.01) == []


def test_full_queue_refuses_instead_of_blocking():
    clock = FakeClock()
    b = Batcher(max_batch=4, max_delay_ms=1, max_queue=3, clock=clock)
    assert [b.offer(item(i, clock)) for i in range(4)] == [True, True, True, False]
    assert len(b.drain(10)) == 3 and b.depth() == 0
