"""Timers on the loop: ``chatcore.call_later`` and the handles it returns.

Deadlines are checked on a fake clock (``chatcore.timers.monotonic`` replaced)
and the poller's waits are recorded instead of slept, so no test waits for a
deadline in real time.  Every loop test runs on each poller this platform has.
"""

import logging

import pytest
from helpers.channels import Reader

import chatcore
from chatcore import eventloop, timers
from chatcore.compat import asyncore as compat_asyncore


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timers, "monotonic", fake)
    return fake


@pytest.fixture
def waits(poller_kind, clock, monkeypatch):
    """The timeout of every poller wait; a wait never sleeps, it moves the fake clock on instead."""
    make_poller = eventloop.new_poller
    recorded = []

    def recording_poller():
        poller = make_poller()
        real_wait = poller.wait

        def wait(timeout):
            recorded.append(timeout)
            events = real_wait(0.0)
            if timeout:
                clock.advance(timeout)
            return events

        poller.wait = wait
        return poller

    monkeypatch.setattr(eventloop, "new_poller", recording_poller)
    return recorded


@pytest.fixture
def channel_map(sockets):
    """A map holding one idle reader (so that loop() turns), emptied after the test."""
    served = {}
    left, _ = sockets.pair()
    Reader(left, served)
    yield served
    chatcore.close_all(served)
    chatcore.loop(timeout=0, map=served, count=1)  # gives the poller back


def _schedule_of(channel_map):
    return eventloop._schedules[id(channel_map)][1]


def test_due_calls_run_in_deadline_order_and_equal_deadlines_first_in_first_out(clock, channel_map):
    ran = []
    for name, delay in [("c", 3), ("a", 1), ("b1", 2), ("b2", 2), ("b3", 2)]:
        chatcore.call_later(delay, ran.append, name, map=channel_map)
    clock.advance(2.5)
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert ran == ["a", "b1", "b2", "b3"]
    clock.advance(1)
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert ran == ["a", "b1", "b2", "b3", "c"]


def test_a_handle_tells_its_deadline_and_cancel_stops_a_call_not_yet_due(clock, channel_map):
    ran = []
    handle = chatcore.call_later(5, ran.append, "cancelled", map=channel_map)
    assert isinstance(handle, chatcore.TimerHandle)
    assert handle.when == clock.now + 5 and not handle.cancelled()
    handle.cancel()
    handle.cancel()  # again: nothing more happens
    assert handle.cancelled() and "cancelled" in repr(handle)
    clock.advance(10)
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert ran == []
    assert _schedule_of(channel_map).heap_size() == 0


def test_cancelling_a_call_that_has_run_changes_nothing(clock, channel_map):
    ran = []
    handle = chatcore.call_later(0, ran.append, "ran", map=channel_map)
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert "done" in repr(handle)
    handle.cancel()
    assert ran == ["ran"] and handle.cancelled()


def test_a_callback_can_cancel_a_call_due_in_the_same_turn(clock, channel_map):
    ran = []
    later = []
    chatcore.call_later(1, lambda: later[0].cancel(), map=channel_map)
    later.append(chatcore.call_later(1, ran.append, "cancelled by the first", map=channel_map))
    chatcore.call_later(1, ran.append, "third", map=channel_map)
    clock.advance(1)
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert ran == ["third"]


def test_a_call_scheduled_by_a_callback_for_now_waits_for_the_next_turn(clock, channel_map):
    ran = []

    def again():
        ran.append("again")
        chatcore.call_later(0, again, map=channel_map)

    chatcore.call_later(0, again, map=channel_map)
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert ran == ["again"]
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert ran == ["again", "again"]


def test_scheduling_and_cancelling_100000_timers_keeps_the_heap_bounded(clock, channel_map):
    schedule_size = []
    for _ in range(100_000):
        chatcore.call_later(60, print, map=channel_map).cancel()
        schedule_size.append(_schedule_of(channel_map).heap_size())
    assert max(schedule_size) <= 2 * timers.Schedule.COMPACT_MIN + 2
    assert _schedule_of(channel_map).pending() == 0


def test_with_100000_timers_pending_a_turn_runs_only_the_due_one(clock, channel_map):
    ran = []
    handles = [chatcore.call_later(60 + index % 1000, ran.append, index, map=channel_map) for index in range(100_000)]
    chatcore.call_later(1, ran.append, "due", map=channel_map)
    clock.advance(1)
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert ran == ["due"]
    assert _schedule_of(channel_map).pending() == 100_000
    for handle in handles[::2]:
        handle.cancel()
    assert _schedule_of(channel_map).pending() == 50_000
    assert _schedule_of(channel_map).heap_size() <= 100_000


@pytest.mark.parametrize("use_poll", [False, True])
def test_a_turn_waits_no_longer_than_the_next_deadline(waits, clock, channel_map, use_poll):
    ran = []
    chatcore.call_later(5, ran.append, "in 5 s", map=channel_map)
    chatcore.call_later(50, ran.append, "in 50 s", map=channel_map)
    chatcore.loop(timeout=30, use_poll=use_poll, map=channel_map, count=1)
    assert waits == [5] and ran == ["in 5 s"]
    chatcore.loop(timeout=30, use_poll=use_poll, map=channel_map, count=1)
    assert waits == [5, 30] and ran == ["in 5 s"]
    # Without a timeout of its own, the turn waits for the deadline.
    chatcore.loop(timeout=None, use_poll=use_poll, map=channel_map, count=1)
    assert waits[2] == pytest.approx(15) and ran == ["in 5 s", "in 50 s"]
    # A due call does not wait at all, a cancelled one does not count.
    chatcore.call_later(-1, ran.append, "overdue", map=channel_map)
    chatcore.call_later(1, ran.append, "cancelled", map=channel_map).cancel()
    chatcore.loop(timeout=30, use_poll=use_poll, map=channel_map, count=1)
    assert waits[3:] == [0.0] and ran[-1] == "overdue"


def _map_of_a_channel_that_wants_nothing(sockets, dispatcher_class):
    """A map whose one channel is neither readable nor writable: a select turn has nothing to watch."""
    deaf_map = {}
    left, _ = sockets.pair()
    deaf = dispatcher_class(left, map=deaf_map)
    deaf.readable = deaf.writable = lambda: False
    return deaf_map


def test_with_nothing_to_watch_a_select_turn_still_wakes_for_the_deadline(waits, clock, sockets):
    deaf_map = _map_of_a_channel_that_wants_nothing(sockets, chatcore.dispatcher)
    ran = []
    chatcore.call_later(2, ran.append, "due", map=deaf_map)
    chatcore.loop(timeout=30, map=deaf_map, count=1)
    assert waits == [2] and ran == ["due"]
    chatcore.close_all(deaf_map)
    chatcore.loop(timeout=0, map=deaf_map, count=1)


def test_compat_loop_with_a_replaced_time_module_sleeps_until_the_deadline(clock, sockets, monkeypatch):
    slept = []

    class FakeTime:
        @staticmethod
        def sleep(seconds):
            slept.append(seconds)
            clock.advance(seconds)

    monkeypatch.setattr(compat_asyncore, "time", FakeTime)
    deaf_map = _map_of_a_channel_that_wants_nothing(sockets, compat_asyncore.dispatcher)
    ran = []
    chatcore.call_later(2, ran.append, "due", map=deaf_map)
    compat_asyncore.loop(timeout=30, map=deaf_map, count=2)
    assert slept == [2, 30] and ran == ["due"]
    compat_asyncore.close_all(deaf_map)


def test_loop_returns_when_the_map_empties_even_with_timers_pending(clock, channel_map):
    ran = []
    reader = next(iter(channel_map.values()))
    pending = chatcore.call_later(3600, ran.append, "in an hour", map=channel_map)
    chatcore.call_later(0, reader.close, map=channel_map)
    chatcore.loop(timeout=30, map=channel_map)
    assert not channel_map and ran == []
    assert not pending.cancelled()
    # An empty map: no turn, so nothing runs, due or not.
    clock.advance(3600)
    chatcore.loop(timeout=30, map=channel_map)
    assert ran == []
    pending.cancel()


def test_an_exception_in_a_callback_is_logged_and_the_loop_carries_on(clock, channel_map, caplog):
    timers._CALLBACK_ERROR.reset()
    ran = []

    def fails():
        raise RuntimeError("callback failed")

    chatcore.call_later(0, fails, map=channel_map)
    chatcore.call_later(0, ran.append, "after", map=channel_map)
    with caplog.at_level(logging.ERROR, logger="chatcore"):
        chatcore.loop(timeout=0, map=channel_map, count=1)
    assert ran == ["after"]
    [record] = [record for record in caplog.records if record.name == "chatcore"]
    assert record.exc_info[0] is RuntimeError and "fails" in record.getMessage()


def test_failing_callbacks_are_logged_rate_limited(clock, channel_map, caplog):
    # One failing callback per connection a peer opens must not flood the log.
    timers._CALLBACK_ERROR.reset()

    def fails():
        raise RuntimeError("callback failed")

    for _ in range(25):
        chatcore.call_later(0, fails, map=channel_map)
    with caplog.at_level(logging.ERROR, logger="chatcore"):
        chatcore.loop(timeout=0, map=channel_map, count=1)
    messages = [record.getMessage() for record in caplog.records if record.name == "chatcore"]
    failures = [message for message in messages if message.startswith("Exception in callback")]
    assert len(failures) == timers._CALLBACK_ERROR.burst
    assert sum("suppressing them" in message for message in messages) == 1
    timers._CALLBACK_ERROR.reset()


def test_exit_now_from_a_callback_leaves_the_loop_and_keeps_the_later_calls(clock, channel_map):
    ran = []

    def leave():
        raise chatcore.ExitNow

    chatcore.call_later(0, leave, map=channel_map)
    chatcore.call_later(0, ran.append, "next turn", map=channel_map)
    with pytest.raises(chatcore.ExitNow):
        chatcore.loop(timeout=0, map=channel_map)
    assert ran == []
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert ran == ["next turn"]


def test_timers_of_the_default_map_run_in_its_loop(clock, sockets):
    left, _ = sockets.pair()
    reader = Reader(left, None)
    ran = []
    chatcore.call_later(0, ran.append, "default map")
    chatcore.call_later(0, reader.close)
    chatcore.loop(timeout=0)
    assert ran == ["default map"] and id(chatcore.socket_map) not in eventloop._schedules


def test_call_later_refuses_what_it_cannot_schedule(channel_map):
    with pytest.raises(TypeError):
        chatcore.call_later(1, "not callable", map=channel_map)
    with pytest.raises(ValueError):
        chatcore.call_later(float("nan"), print, map=channel_map)
