"""Handing work to the loop from other threads: ``chatcore.call_soon_threadsafe``.

A loop that sleeps without a timeout is woken by a handoff; a test whose
wake-up is lost would sleep forever, so each one has a watchdog that stops
the loop after ``WATCHDOG`` seconds and fails the test: a thread writing to a
socket of the map (``Watchdog``), or a timer.  Nothing measures time.
"""

import os
import select
import threading

import pytest
from helpers.serving import serve_and_receive, serve_until

import chatcore
from chatcore import eventloop, wakeup

#: Seconds after which a test's loop is stopped from outside, and the test fails.
WATCHDOG = 30.0


class Watchdog(chatcore.dispatcher):
    """Stops the loop (closes every channel of its map) when its peer writes, WATCHDOG s after start()."""

    def __init__(self, sockets, channel_map):
        left, self._peer = sockets.pair()
        super().__init__(left, map=channel_map)
        self._map = channel_map
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._wait_then_fire)

    def start(self):
        self._thread.start()
        return self

    def _wait_then_fire(self):
        if not self._stop.wait(WATCHDOG):
            self._peer.send(b"!")

    def writable(self):
        return False

    def handle_read(self):
        self.recv(1)
        self.fired = True
        chatcore.close_all(self._map)

    def join(self):
        self._stop.set()
        self._thread.join()
        assert not self.fired, "the loop was not woken within %s s" % WATCHDOG


@pytest.mark.parametrize("use_poll", [False, True])
def test_10000_handoffs_from_several_threads_run_in_the_loops_thread_in_order(poller_kind, sockets, use_poll):
    channel_map = {}
    watchdog = Watchdog(sockets, channel_map).start()
    threads_count, per_thread = 4, 2500
    ran = []
    loop_thread = threading.get_ident()

    def record(sender, number):
        ran.append((sender, number, threading.get_ident()))
        if len(ran) == threads_count * per_thread:
            chatcore.close_all(channel_map)

    start = threading.Barrier(threads_count)

    def send(sender):
        start.wait()
        for number in range(per_thread):
            chatcore.call_soon_threadsafe(record, sender, number, map=channel_map)

    senders = [threading.Thread(target=send, args=(sender,)) for sender in range(threads_count)]
    for thread in senders:
        thread.start()
    try:
        chatcore.loop(timeout=None, use_poll=use_poll, map=channel_map)
    finally:
        for thread in senders:
            thread.join()
        watchdog.join()
    assert len(ran) == threads_count * per_thread
    assert {thread for _, _, thread in ran} == {loop_thread}
    for sender in range(threads_count):
        assert [number for who, number, _ in ran if who == sender] == list(range(per_thread))


class Sleeper(chatcore.dispatcher):
    """Wants nothing; the first time the loop asks (just before it sleeps) it starts *thread*."""

    def __init__(self, sock, channel_map, thread):
        super().__init__(sock, map=channel_map)
        self._thread = thread

    def readable(self):
        if self._thread.ident is None:  # not started yet
            self._thread.start()
        return False

    def writable(self):
        return False


def _handoff_thread(callback, channel_map):
    return threading.Thread(
        target=chatcore.call_soon_threadsafe, args=(callback, channel_map), kwargs={"map": channel_map}
    )


@pytest.mark.parametrize("use_poll", [False, True])
def test_a_first_handoff_wakes_a_loop_asleep_before_the_map_had_a_schedule(poller_kind, sockets, use_poll):
    channel_map = {}
    watchdog = Watchdog(sockets, channel_map).start()
    handed = _handoff_thread(chatcore.close_all, channel_map)
    left, _ = sockets.pair()
    Sleeper(left, channel_map, handed)
    assert id(channel_map) not in eventloop._schedules
    try:
        chatcore.loop(timeout=None, use_poll=use_poll, map=channel_map)
    finally:
        handed.join()
        watchdog.join()
    assert not channel_map


@pytest.mark.parametrize("use_poll", [False, True])
def test_a_handoff_wakes_a_loop_with_nothing_to_watch(poller_kind, sockets, use_poll):
    # Only a timer can stop this loop if the handoff is lost: in select mode
    # there is no descriptor to watch but the waker.
    channel_map = {}
    fired = []
    handed = _handoff_thread(chatcore.close_all, channel_map)
    left, _ = sockets.pair()
    Sleeper(left, channel_map, handed)
    watchdog = chatcore.call_later(WATCHDOG, lambda: fired.append(chatcore.close_all(channel_map)), map=channel_map)
    try:
        chatcore.loop(timeout=None, use_poll=use_poll, map=channel_map)
    finally:
        handed.join()
        watchdog.cancel()
    assert not channel_map and not fired


def test_a_handoff_before_any_loop_runs_on_the_next_turn(sockets):
    channel_map = {}
    left, _ = sockets.pair()
    channel = chatcore.dispatcher(left, map=channel_map)
    ran = []
    thread = threading.Thread(
        target=chatcore.call_soon_threadsafe, args=(ran.append, "handed"), kwargs={"map": channel_map}
    )
    thread.start()
    thread.join()
    chatcore.loop(timeout=30, map=channel_map, count=1)
    assert ran == ["handed"]
    channel.close()
    chatcore.loop(timeout=0, map=channel_map, count=1)


def test_a_worker_thread_hands_a_push_back_to_the_loop(chat_class, sockets):
    channel_map = {}
    left, right = sockets.pair()
    channel = chat_class(left, map=channel_map)

    def worker():
        reply = b"".join(b"line %d\n" % number for number in range(1000))
        chatcore.call_soon_threadsafe(channel.push, reply, map=channel_map)
        chatcore.call_soon_threadsafe(channel.close_when_done, map=channel_map)

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        received = serve_and_receive(channel_map, right)
    finally:
        thread.join()
    assert received == b"".join(b"line %d\n" % number for number in range(1000))


def test_the_waker_is_closed_with_the_maps_poller(sockets):
    channel_map = {}
    left, _ = sockets.pair()
    channel = chatcore.dispatcher(left, map=channel_map)
    chatcore.loop(timeout=0, map=channel_map, count=1)
    waker = eventloop._pollers._pollers[id(channel_map)][1].waker
    assert waker is not None and waker.fileno() >= 0
    os.fstat(waker.fileno())
    channel.close()
    chatcore.loop(timeout=0, map=channel_map, count=1)
    assert waker.fileno() == -1 and id(channel_map) not in eventloop._pollers._pollers
    waker.wake()  # closed: does nothing
    with pytest.raises(TypeError):
        chatcore.call_soon_threadsafe("not callable", map=channel_map)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_does_not_share_the_parents_waker(sockets):
    channel_map = {}
    left, _ = sockets.pair()
    channel = chatcore.dispatcher(left, map=channel_map)
    channel.writable = lambda: False
    chatcore.loop(timeout=0, map=channel_map, count=1)  # the map's poller, with its waker
    parent_waker = eventloop._pollers._pollers[id(channel_map)][1].waker
    ran = []
    chatcore.call_soon_threadsafe(ran.append, "handed before the fork", map=channel_map)
    result_read, result_write = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # child: its own poller and waker, and the queued call
            status = 1
            try:
                closed = parent_waker.fileno() == -1
                chatcore.loop(timeout=0, map=channel_map, count=1)
                child_waker = eventloop._pollers._pollers[id(channel_map)][1].waker
                fresh = child_waker is not parent_waker and child_waker.fileno() >= 0
                os.write(result_write, b"%d%d%s" % (closed, fresh, ran[0].encode()))
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.read(result_read, 100) == b"11handed before the fork" and status == 0
        # The child did not empty the parent's waker: it still wakes the parent.
        assert select.select([parent_waker.fileno()], [], [], 0)[0]
        chatcore.loop(timeout=30, map=channel_map, count=1)
        assert ran == ["handed before the fork"]
    finally:
        os.close(result_read)
        os.close(result_write)
        channel.close()
        chatcore.loop(timeout=0, map=channel_map, count=1)


@pytest.mark.parametrize("kind", ["eventfd", "pipe", "socketpair"])
def test_each_kind_of_waker_becomes_readable_and_is_emptied(kind, monkeypatch):
    if kind == "eventfd" and not hasattr(os, "eventfd"):
        pytest.skip("no os.eventfd here")
    if kind != "eventfd":
        monkeypatch.delattr(os, "eventfd", raising=False)
    if kind == "socketpair":
        monkeypatch.setattr(os, "name", "nt")  # Windows' choice: select() watches only sockets
    waker = wakeup.Waker()
    monkeypatch.undo()
    try:
        assert not select.select([waker.fileno()], [], [], 0)[0]
        for _ in range(70_000):  # more than a pipe holds: the extra wake-ups are dropped
            waker.wake()
        assert select.select([waker.fileno()], [], [], 0)[0]
        waker.drain()
        assert not select.select([waker.fileno()], [], [], 0)[0]
        waker.drain()  # nothing pending: no error
    finally:
        waker.close()
    assert waker.fileno() == -1


class Stale(chatcore.dispatcher):
    """A channel whose socket gets closed behind the map's back: its recv() fails, and it closes."""

    def writable(self):
        return False

    def handle_read(self):
        self.recv(1)

    def handle_error(self):
        self.close()


@pytest.mark.parametrize("use_poll", [False, True])
def test_a_stale_channel_under_the_wakers_number_is_closed_and_the_waker_still_works(poller_kind, sockets, use_poll):
    # Two descriptors closed behind the map's back: a new poller takes the
    # first number and its waker the second, which a stale channel still maps.
    channel_map = {}
    watchdog = Watchdog(sockets, channel_map)
    stale = [Stale(sockets.pair()[0], map=channel_map) for _ in range(2)]
    for channel in stale:
        channel.socket.close()
    watchdog.start()
    handed = _handoff_thread(chatcore.close_all, channel_map)
    try:
        serve_until(
            channel_map, lambda: not any(channel in channel_map.values() for channel in stale), use_poll=use_poll
        )
        handed.start()
        chatcore.loop(timeout=None, use_poll=use_poll, map=channel_map)
    finally:
        if handed.ident is not None:
            handed.join()
        watchdog.join()
    assert not channel_map
