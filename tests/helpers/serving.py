"""Turning an event loop over one channel map until something has happened.

Every wait is a number of loop turns of at most ``TURN`` seconds each, so a
test that fails stops within a bound and says what it waited for; a turn in
which events arrive ends early, so the bound is never a measurement.
"""

from collections.abc import Iterable
from typing import Any, Callable, Optional

import chatcore

from .sockets import Peer

#: The longest one loop turn waits for an event, in seconds.
TURN = 0.01
#: The most turns ``serve_until`` takes by default: about 20 s of waiting.
TURNS = 2000


def serve_until(
    channel_map: dict[int, Any],
    condition: Callable[[], Any],
    *,
    what: str = "the condition",
    use_poll: bool = False,
    loop: Optional[Callable[..., None]] = None,
    peers: Iterable[Any] = (),
    turns: int = TURNS,
) -> None:
    """Turn *loop* (``chatcore.loop`` unless given) over *channel_map* until *condition()* is true.

    Before each check every ``helpers.sockets.Peer`` in *peers* collects what
    has arrived.  Fails, naming *what*, when *turns* turns pass first.
    """
    loop = chatcore.loop if loop is None else loop
    peers = list(peers)
    for _ in range(turns):
        for peer in peers:
            peer.pump()
        if condition():
            return
        loop(timeout=TURN, use_poll=use_poll, map=channel_map, count=1)
    raise AssertionError("%s was not reached in %d loop turns" % (what, turns))


def serve_and_receive(channel_map: dict[int, Any], sock: Any, size: Optional[int] = None, **options: Any) -> bytes:
    """What the far end *sock* receives while the loop turns: *size* bytes, or (None) all until end of stream.

    *options* are ``serve_until``'s.
    """
    peer = Peer(sock)
    wanted = "end of stream" if size is None else "%d bytes" % size
    serve_until(
        channel_map,
        lambda: peer.eof or (size is not None and len(peer.received) >= size),
        what="the peer receiving " + wanted,
        peers=[peer],
        **options,
    )
    return bytes(peer.received)


def release(channel_map: dict[int, Any], core: Any = chatcore) -> None:
    """Close every channel of *channel_map*, then let the loop hand the map's poller back.

    *core* is the module whose ``close_all`` and ``loop`` serve the map
    (chatcore, chatcore.compat.asyncore or the oracle's asyncore).  One turn
    over the empty map returns at once; chatcore's loop releases its cached
    poller there.
    """
    core.close_all(channel_map, ignore_all=True)
    core.loop(timeout=0, map=channel_map, count=1)
