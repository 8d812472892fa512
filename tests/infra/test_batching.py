"""Calls of one event-loop turn sent together (service/infra/batching.py)."""

from __future__ import annotations

import asyncio

import pytest

from service.infra.batching import TurnBatch


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.fail = fail

    async def send(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(0.01)
        if self.fail:
            raise ConnectionError("down")
        return [item * 10 for item in items]


async def test_calls_of_one_turn_share_one_send_and_get_their_own_results() -> None:
    recorder = Recorder()
    batch: TurnBatch[int, int] = TurnBatch(recorder.send)
    results = await asyncio.gather(*(batch.call(i) for i in range(20)))
    assert results == [i * 10 for i in range(20)]
    assert recorder.batches == [list(range(20))]


async def test_a_call_made_while_a_batch_is_on_its_way_goes_into_the_next() -> None:
    recorder = Recorder()
    batch: TurnBatch[int, int] = TurnBatch(recorder.send)
    first = asyncio.ensure_future(batch.call(1))
    await asyncio.sleep(0.001)  # the first batch has been sent
    assert recorder.batches == [[1]]
    second = await batch.call(2)
    assert (await first, second) == (10, 20)
    assert recorder.batches == [[1], [2]]


async def test_a_failed_send_reaches_every_call_and_the_next_batch_works() -> None:
    recorder = Recorder(fail=True)
    batch: TurnBatch[int, int] = TurnBatch(recorder.send)
    outcomes = await asyncio.gather(*(batch.call(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    recorder.fail = False
    assert await batch.call(4) == 40


async def test_a_caller_that_gives_up_does_not_cancel_the_others() -> None:
    recorder = Recorder()
    batch: TurnBatch[int, int] = TurnBatch(recorder.send)
    impatient = asyncio.ensure_future(batch.call(1))
    patient = asyncio.ensure_future(batch.call(2))
    await asyncio.sleep(0.001)
    impatient.cancel()
    with pytest.raises(asyncio.CancelledError):
        await impatient
    assert await patient == 20


async def test_calls_made_while_a_batch_is_on_its_way_go_out_together_after_it() -> None:
    recorder = Recorder()
    batch: TurnBatch[int, int] = TurnBatch(recorder.send)
    first = asyncio.ensure_future(batch.call(1))
    await asyncio.sleep(0.001)  # the first batch is on its way (its send takes 10 ms)
    later = []
    for item in (2, 3, 4):  # three separate turns of the loop
        later.append(asyncio.ensure_future(batch.call(item)))
        await asyncio.sleep(0)
    assert recorder.batches == [[1]]
    assert await asyncio.gather(first, *later) == [10, 20, 30, 40]
    assert recorder.batches == [[1], [2, 3, 4]]


async def test_calls_waiting_behind_a_failed_batch_fail_with_it_at_once() -> None:
    recorder = Recorder(fail=True)
    batch: TurnBatch[int, int] = TurnBatch(recorder.send)
    first = asyncio.ensure_future(batch.call(1))
    await asyncio.sleep(0.001)
    waiting = asyncio.ensure_future(batch.call(2))
    outcomes = await asyncio.gather(first, waiting, return_exceptions=True)
    assert all(isinstance(outcome, ConnectionError) for outcome in outcomes)
    assert recorder.batches == [[1]]  # the waiting call was not sent on its own
    recorder.fail = False
    assert await batch.call(3) == 30
    assert recorder.batches == [[1], [3]]
