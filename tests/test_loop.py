"""The kernel-poller loop: scale past select()'s limit, and asyncore's semantics.

Every test runs on each poller this platform has (epoll here, and the
``selectors`` fallback used elsewhere), in select and poll mode where it matters.
"""

import collections
import os
import socket
import sys

import pytest
from helpers.channels import Reader
from helpers.serving import serve_until
from helpers.sockets import Peer

import chatcore
from chatcore import eventloop


@pytest.fixture
def many_fds():
    """Raise the soft descriptor limit so the test can pass 1024 descriptors."""
    resource = pytest.importorskip("resource", reason="no resource module on this platform")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 3000
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip("hard descriptor limit %d is below %d" % (hard, wanted))
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        yield
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.skipif(sys.platform == "win32", reason="select() on Windows is limited to 512 sockets")
@pytest.mark.parametrize("use_poll", [False, True])
def test_serves_descriptors_above_1024(many_fds, use_poll):
    # Only the platform's best poller: the selectors fallback is select() on some systems.
    channel_map = {}
    peers = []
    try:
        for _ in range(700):
            left, right = socket.socketpair()
            peers.append(right)
            Reader(left, channel_map)
        assert max(channel_map) > 1024
        high = sorted(channel_map)[-5:]
        by_fd = {fd: channel_map[fd] for fd in high}
        for peer in peers[-5:]:
            peer.sendall(b"ping")
        serve_until(channel_map, lambda: all(c.received == b"ping" for c in by_fd.values()), use_poll=use_poll)
        assert all(c.received == b"" for fd, c in channel_map.items() if fd not in by_fd)
    finally:
        chatcore.close_all(channel_map)
        for peer in peers:
            peer.close()


@pytest.mark.parametrize("use_poll", [False, True])
def test_readable_and_writable_are_asked_every_turn(poller_kind, use_poll):
    left, right = socket.socketpair()
    channel_map = {}

    class Toggling(chatcore.dispatcher):
        want_write = False
        writes = 0

        def readable(self):
            return False

        def writable(self):
            return self.want_write

        def handle_write(self):
            self.writes += 1
            self.want_write = False

    channel = Toggling(left, map=channel_map)
    try:
        chatcore.loop(timeout=0.01, use_poll=use_poll, map=channel_map, count=3)
        assert channel.writes == 0
        channel.want_write = True
        chatcore.loop(timeout=0.01, use_poll=use_poll, map=channel_map, count=3)
        assert channel.writes == 1
    finally:
        chatcore.close_all(channel_map)
        right.close()


@pytest.mark.parametrize("use_poll", [False, True])
def test_reused_descriptor_number_gets_events(poller_kind, use_poll):
    # A channel closes and a new socket takes its descriptor number inside one
    # loop() call: the kernel forgot the old registration, the loop must not.
    channel_map = {}
    peers = []

    class Stopping(Reader):
        def handle_read(self):
            super().handle_read()
            if self.received == b"second":
                raise chatcore.ExitNow()

    class Replacing(Reader):
        def handle_read(self):
            super().handle_read()
            number = self._fileno
            self.close()
            new_left, new_right = socket.socketpair()
            peers.append(new_right)
            self.replacement = Stopping(new_left, channel_map)
            self.same_number = new_left.fileno() == number
            new_right.sendall(b"second")

    left, right = socket.socketpair()
    peers.append(right)
    first = Replacing(left, channel_map)
    try:
        right.sendall(b"go")
        with pytest.raises(chatcore.ExitNow):
            chatcore.loop(timeout=0.05, use_poll=use_poll, map=channel_map, count=100)
        assert first.same_number  # the test really exercised a reused number
        assert first.replacement.received == b"second"
    finally:
        chatcore.close_all(channel_map)
        for peer in peers:
            peer.close()


@pytest.mark.skipif(os.name != "posix", reason="file_dispatcher is POSIX-only")
@pytest.mark.parametrize("use_poll", [False, True])
def test_regular_file_dispatcher_is_always_ready(poller_kind, use_poll, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"It's not dead, it's sleeping!")
    channel_map = {}
    chunks = []

    class FileReader(chatcore.file_dispatcher):
        def writable(self):
            return False

        def handle_read(self):
            data = self.recv(8)
            chunks.append(data)
            if not data:
                self.close()

    fd = os.open(str(path), os.O_RDONLY)
    try:
        FileReader(fd, map=channel_map)
    finally:
        os.close(fd)
    try:
        chatcore.loop(timeout=0.01, use_poll=use_poll, map=channel_map, count=20)
        assert b"".join(chunks) == b"It's not dead, it's sleeping!"
        assert channel_map == {}
    finally:
        chatcore.close_all(channel_map)


@pytest.mark.parametrize("use_poll", [False, True])
def test_socket_closed_behind_the_maps_back_does_not_stop_the_loop(poller_kind, use_poll):
    channel_map = {}
    broken_left, broken_right = socket.socketpair()
    good_left, good_right = socket.socketpair()

    class Closing(Reader):
        def handle_read(self):
            self.received += self.recv(4096)

        def handle_error(self):
            self.errored = True
            self.close()

    broken = Closing(broken_left, channel_map)
    good = Reader(good_left, channel_map)
    try:
        broken_left.close()  # the fd is gone but the channel is still mapped
        good_right.sendall(b"still served")
        serve_until(channel_map, lambda: good.received == b"still served", use_poll=use_poll)
        serve_until(
            channel_map,
            lambda: broken_left.fileno() not in channel_map and broken not in channel_map.values(),
            use_poll=use_poll,
        )
    finally:
        chatcore.close_all(channel_map, ignore_all=True)
        broken_right.close()
        good_right.close()


def test_hang_up_in_poll_mode_calls_handle_close(poller_kind):
    left, right = socket.socketpair()
    channel_map = {}
    channel = Reader(left, channel_map)
    try:
        right.close()
        serve_until(channel_map, lambda: channel.closed_by_peer, use_poll=True)
        assert channel_map == {}
    finally:
        chatcore.close_all(channel_map)


def test_exit_now_leaves_the_loop(poller_kind):
    left, right = socket.socketpair()
    channel_map = {}

    class Quitter(Reader):
        def handle_read(self):
            raise chatcore.ExitNow()

    Quitter(left, channel_map)
    try:
        right.sendall(b"x")
        with pytest.raises(chatcore.ExitNow):
            chatcore.loop(timeout=1, map=channel_map, count=50)
    finally:
        chatcore.close_all(channel_map)
        right.close()


def test_loop_returns_on_an_empty_map_and_after_count_turns(poller_kind):
    chatcore.loop(timeout=5, map={})  # returns at once
    left, right = socket.socketpair()
    channel_map = {}
    Reader(left, channel_map)
    try:
        chatcore.loop(timeout=0.001, map=channel_map, count=3)
    finally:
        chatcore.close_all(channel_map)
        right.close()


def test_errors_in_handlers_go_to_handle_error_and_others_are_served(poller_kind):
    channel_map = {}
    bad_left, bad_right = socket.socketpair()
    good_left, good_right = socket.socketpair()

    class Crashing(Reader):
        def handle_read(self):
            raise ValueError("handler bug")

        def handle_error(self):
            self.errors = getattr(self, "errors", 0) + 1
            self.close()

    bad = Crashing(bad_left, channel_map)
    good = Reader(good_left, channel_map)
    try:
        bad_right.sendall(b"boom")
        good_right.sendall(b"fine")
        serve_until(channel_map, lambda: good.received == b"fine")
        assert bad.errors == 1 and bad not in channel_map.values()
    finally:
        chatcore.close_all(channel_map)
        bad_right.close()
        good_right.close()


# -- one poller per map, kept between loop() calls --------------------------------


def _cached_poller(channel_map):
    entry = eventloop._pollers._pollers.get(id(channel_map))
    return entry[1] if entry is not None else None


def test_repeated_count_1_loops_reuse_one_poller(poller_kind):
    left, right = socket.socketpair()
    channel_map = {}
    channel = Reader(left, channel_map)
    try:
        chatcore.loop(timeout=0.001, map=channel_map, count=1)
        first = _cached_poller(channel_map)
        assert first is not None
        for _ in range(5):
            chatcore.poll(0.001, channel_map)
            chatcore.loop(timeout=0.001, map=channel_map, count=1)
        assert _cached_poller(channel_map) is first
        right.sendall(b"still works")
        serve_until(channel_map, lambda: channel.received == b"still works")
    finally:
        chatcore.close_all(channel_map)
        right.close()
    chatcore.loop(timeout=0.001, map=channel_map, count=1)  # an empty map gives it back
    assert _cached_poller(channel_map) is None


def test_descriptor_reused_between_loop_calls(poller_kind):
    channel_map = {}
    left, right = socket.socketpair()
    first = Reader(left, channel_map)
    peers = [right]
    try:
        chatcore.loop(timeout=0.001, map=channel_map, count=1)
        number = left.fileno()
        first.close()
        new_left, new_right = socket.socketpair()
        peers.append(new_right)
        second = Reader(new_left, channel_map)
        assert new_left.fileno() == number
        new_right.sendall(b"reused")
        serve_until(channel_map, lambda: second.received == b"reused")
    finally:
        chatcore.close_all(channel_map)
        for peer in peers:
            peer.close()


def test_a_nested_loop_on_the_same_map_gets_its_own_poller(poller_kind):
    channel_map = {}
    outer_left, outer_right = socket.socketpair()
    inner_left, inner_right = socket.socketpair()

    class Nesting(Reader):
        def handle_read(self):
            super().handle_read()
            inner_right.sendall(b"inner")
            chatcore.loop(timeout=0.01, map=channel_map, count=5)

    Nesting(outer_left, channel_map)
    inner = Reader(inner_left, channel_map)
    try:
        outer_right.sendall(b"outer")
        serve_until(channel_map, lambda: inner.received == b"inner")
    finally:
        chatcore.close_all(channel_map)
        outer_right.close()
        inner_right.close()


def test_the_poller_in_use_survives_other_maps_filling_the_cache(poller_kind):
    busy_map = {}
    left, right = socket.socketpair()
    others = [({}, socket.socketpair()) for _ in range(eventloop._PollerCache.MAX_MAPS + 2)]
    seen = []

    class PollsOthers(Reader):
        def handle_read(self):
            super().handle_read()
            seen.append(_cached_poller(busy_map))
            # More maps than the cache keeps, polled while busy_map's poller is lent.
            for other_map, _ in others:
                chatcore.poll(0, other_map)
            seen.append(_cached_poller(busy_map))

    channel = PollsOthers(left, busy_map)
    for other_map, (other_left, _) in others:
        Reader(other_left, other_map)
    try:
        right.sendall(b"x")
        serve_until(busy_map, lambda: channel.received == b"x")
        assert seen[0] is not None and seen[1] is seen[0]
        assert len(eventloop._pollers._pollers) <= eventloop._PollerCache.MAX_MAPS
        # Given back, it is reused.
        chatcore.loop(timeout=0.001, map=busy_map, count=1)
        assert _cached_poller(busy_map) is seen[0]
    finally:
        chatcore.close_all(busy_map)
        right.close()
        for other_map, (_, other_right) in others:
            chatcore.close_all(other_map)
            other_right.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_does_not_share_the_parents_poller(poller_kind):
    channel_map = {}
    left, right = socket.socketpair()
    channel = Reader(left, channel_map)
    result_read, result_write = os.pipe()
    try:
        chatcore.loop(timeout=0.001, map=channel_map, count=1)  # cache a poller
        pid = os.fork()
        if pid == 0:  # child: serve its own copy of the channel, report, leave
            status = 1
            try:
                right.sendall(b"child")
                for _ in range(200):
                    chatcore.loop(timeout=0.01, map=channel_map, count=1)
                    if channel.received:
                        break
                os.write(result_write, channel.received or b"-")
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.read(result_read, 100) == b"child" and status == 0
        right.sendall(b"parent")
        serve_until(channel_map, lambda: channel.received == b"parent")
    finally:
        os.close(result_read)
        os.close(result_write)
        chatcore.close_all(channel_map)
        right.close()


# -- idle channels cost nothing per turn -----------------------------------------------


@pytest.fixture
def counted_looks(monkeypatch):
    """How many times the loop asks a channel what it wants."""
    looks = []
    real = eventloop._look_at

    def counting(poller, fd, obj, poll_mode):
        looks.append(fd)
        return real(poller, fd, obj, poll_mode)

    monkeypatch.setattr(eventloop, "_look_at", counting)
    monkeypatch.setattr(eventloop, "FULL_SCAN_INTERVAL", 3600.0)
    return looks


def _idle_chats(count, channel_map):
    peers = []
    for _ in range(count):
        left, right = socket.socketpair()
        peers.append(right)
        chatcore.async_chat(left, map=channel_map).set_terminator(b"\n")
    return peers


@pytest.mark.parametrize("use_poll", [False, True])
def test_idle_channels_are_not_asked_every_turn(counted_looks, use_poll):
    channel_map = {}
    peers = _idle_chats(300, channel_map)
    try:
        chatcore.loop(timeout=0.001, use_poll=use_poll, map=channel_map, count=1)
        assert len(counted_looks) == 300  # the first turn asks everyone
        del counted_looks[:]
        chatcore.loop(timeout=0.001, use_poll=use_poll, map=channel_map, count=20)
        assert len(counted_looks) == 0
        # A push (even from outside the loop) is noticed without a full scan.
        target = channel_map[sorted(channel_map)[150]]
        target.producer_fifo.append(b"queued directly, then announced by a push\n")
        target.push(b"pushed\n")
        chatcore.loop(timeout=0.001, use_poll=use_poll, map=channel_map, count=5)
        assert 1 <= len(counted_looks) <= 10
    finally:
        chatcore.close_all(channel_map)
        for peer in peers:
            peer.close()


@pytest.mark.parametrize("use_poll", [False, True])
def test_an_idle_listener_is_not_asked_every_turn(counted_looks, use_poll):
    # dispatcher's own readable()/writable() answer True whatever happens.
    channel_map = {}
    listener = chatcore.dispatcher(map=channel_map)
    listener.create_socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(5)
        chatcore.loop(timeout=0.001, use_poll=use_poll, map=channel_map, count=1)
        assert counted_looks == [listener._fileno]
        del counted_looks[:]
        chatcore.loop(timeout=0.001, use_poll=use_poll, map=channel_map, count=20)
        assert counted_looks == []
        # It is watched for connections, never for writing.
        poller = _cached_poller(channel_map)
        assert poller.registrations[listener._fileno][2] & eventloop.POLLIN
        assert not poller.registrations[listener._fileno][2] & eventloop.POLLOUT
    finally:
        chatcore.close_all(channel_map)


def test_push_to_an_idle_channel_from_another_channels_handler(counted_looks):
    channel_map = {}
    peers = _idle_chats(50, channel_map)
    listeners = sorted(channel_map)
    talker_left, talker_right = socket.socketpair()

    class Broadcaster(chatcore.async_chat):
        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            message = self._get_data()
            for fd in listeners:
                channel_map[fd].push(message + b"\n")

    Broadcaster(talker_left, map=channel_map).set_terminator(b"\n")
    try:
        chatcore.loop(timeout=0.001, map=channel_map, count=2)
        talker_right.sendall(b"hello all\n")
        listening = [Peer(peer) for peer in peers]
        serve_until(
            channel_map,
            lambda: all(peer.received == b"hello all\n" for peer in listening),
            what="every listener receiving the broadcast",
            peers=listening,
        )
    finally:
        chatcore.close_all(channel_map)
        talker_right.close()
        for peer in peers:
            peer.close()


def test_state_changed_behind_the_loops_back_is_found_by_the_periodic_scan(monkeypatch):
    monkeypatch.setattr(eventloop, "FULL_SCAN_INTERVAL", 0.05)
    channel_map = {}
    peers = _idle_chats(5, channel_map)
    try:
        chatcore.loop(timeout=0.001, map=channel_map, count=2)
        fd = sorted(channel_map)[2]
        # A queue put in place by hand: nobody is told.
        channel_map[fd].producer_fifo = collections.deque([b"no push() call\n"])
        peer = Peer(peers[2])
        serve_until(channel_map, lambda: peer.received, what="the hand-made queue being sent", peers=[peer])
        assert peer.received == b"no push() call\n"
    finally:
        chatcore.close_all(channel_map)
        for peer in peers:
            peer.close()


def test_channels_with_their_own_predicates_are_still_asked_every_turn(counted_looks):
    channel_map = {}
    left, right = socket.socketpair()

    class Picky(chatcore.async_chat):
        def writable(self):
            return False

    Picky(left, map=channel_map)
    peers = _idle_chats(20, channel_map)
    try:
        chatcore.loop(timeout=0.001, map=channel_map, count=1)
        del counted_looks[:]
        chatcore.loop(timeout=0.001, map=channel_map, count=10)
        assert counted_looks == [left.fileno()] * 10
    finally:
        chatcore.close_all(channel_map)
        right.close()
        for peer in peers:
            peer.close()


@pytest.mark.parametrize("how", ["append", "appendleft", "extend", "insert", "iadd"])
def test_a_direct_producer_fifo_addition_is_sent_on_the_next_turn(counted_looks, how):
    # A legacy relay: A's handler queues bytes on B's producer_fifo without push().
    channel_map = {}
    peers = _idle_chats(3, channel_map)
    target_fd = sorted(channel_map)[1]
    relay_left, relay_right = socket.socketpair()

    class Relay(chatcore.async_chat):
        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            fifo = channel_map[target_fd].producer_fifo
            line = self._get_data() + b"\n"
            if how == "append":
                fifo.append(line)
            elif how == "appendleft":
                fifo.appendleft(line)
            elif how == "extend":
                fifo.extend([line])
            elif how == "insert":
                fifo.insert(0, line)
            else:
                fifo += [line]

    Relay(relay_left, map=channel_map).set_terminator(b"\n")
    try:
        chatcore.loop(timeout=0.001, map=channel_map, count=2)
        relay_right.sendall(b"relayed\n")
        # Turn 1 reads the line, turn 2 must send it: a miss would wait the
        # whole 5 s timeout for nothing (the full scan is an hour away here).
        chatcore.loop(timeout=5.0, map=channel_map, count=2)
        target = Peer(peers[1])
        target.pump()
        assert target.received == b"relayed\n"
    finally:
        chatcore.close_all(channel_map)
        relay_right.close()
        for peer in peers:
            peer.close()


def test_close_all_gives_the_maps_poller_back(poller_kind):
    left, right = socket.socketpair()
    channel_map = {}
    Reader(left, channel_map)
    try:
        chatcore.loop(timeout=0.001, map=channel_map, count=1)
        assert _cached_poller(channel_map) is not None
        chatcore.close_all(channel_map)
        assert _cached_poller(channel_map) is None
        assert id(channel_map) not in eventloop.interest_changes
    finally:
        chatcore.close_all(channel_map)
        right.close()


@pytest.mark.skipif(sys.platform == "win32", reason="descriptor numbers are not reused that way")
@pytest.mark.parametrize("use_poll", [False, True])
def test_a_closed_channel_whose_socket_was_duplicated_gets_no_events_later(poller_kind, use_poll):
    # epoll watches open files, not numbers: a registration left behind by a
    # dup()ed socket would report the copy's traffic under the old number,
    # which the next socket reuses.
    old_left, old_right = socket.socketpair()
    channel_map = {}
    old = Reader(old_left, channel_map)
    chatcore.loop(timeout=0.001, use_poll=use_poll, map=channel_map, count=1)
    number = old_left.fileno()
    copy = old_left.dup()
    old.close()
    new_left, new_right = socket.socketpair()
    try:
        if new_left.fileno() != number:
            pytest.skip("the descriptor number was not reused (%d, then %d)" % (number, new_left.fileno()))
        reads = []

        class Counting(Reader):
            def handle_read(self):
                reads.append(1)
                Reader.handle_read(self)

        new = Counting(new_left, channel_map)
        old_right.sendall(b"for the duplicate only")
        chatcore.loop(timeout=0.01, use_poll=use_poll, map=channel_map, count=5)
        assert reads == [] and new.received == b""
        new_right.sendall(b"for the new socket")
        serve_until(channel_map, lambda: new.received == b"for the new socket", use_poll=use_poll)
    finally:
        chatcore.close_all(channel_map)
        for sock in (copy, old_right, new_left, new_right):
            sock.close()
