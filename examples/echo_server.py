"""A line-echo server on chatcore: every line a client sends comes straight back.

Run it and talk to it with any line-based client::

    python examples/echo_server.py --port 7000
    nc 127.0.0.1 7000

With ``--port 0`` (the default) the kernel picks a free port, which is printed.
A line longer than ``--max-line`` bytes (64 KiB by default) closes that one
connection, so a client that never sends a newline cannot make the server
buffer without bound; ``--max-seconds`` stops serving after that long (the
soak run in ``benchmarks/soak.py`` uses it so the server cannot outlive it).
A connection with no byte received or sent for ``--idle-timeout`` seconds (60
by default) is closed, and one with more than ``--max-output`` bytes (1 MiB by
default) of echo queued because its client does not read is not read from
until the client has taken half of it; 0 turns either limit off.

The handler and the listener are the public ``EchoHandler``, ``Listener`` and
``start_echo_server`` of ``chatcore.demo`` (the ones ``python -m chatcore
demo`` runs), imported rather than written again; this file adds the line
limit (``limited_handler``) and the command line (``parse_arguments``; the
handler class it asks for is ``handler_for``).  ``start_echo_server`` builds a
server on any channel map, so tests can serve from their own loop.
"""

import argparse
import logging
import sys
import time
from typing import Any, Optional

import chatcore
from chatcore.demo import EchoHandler, Listener, add_serving_options, handler_with, serving_limits, start_echo_server

__all__ = [
    "EchoHandler",
    "Listener",
    "handler_for",
    "limited_handler",
    "main",
    "parse_arguments",
    "start_echo_server",
]

#: Longest line (terminator excluded) a client may send by default: lines are
#: short in any line protocol, and each connection may hold one line in memory.
DEFAULT_MAX_LINE = 64 * 1024


def limited_handler(max_line: int, base: type = EchoHandler, **class_attributes: Any) -> type:
    """An EchoHandler (*base*) that closes a connection whose line grows past *max_line* bytes.

    *class_attributes* are further settings for its class body.
    """
    return handler_with(
        base,
        ac_max_message_size=max_line,  # chatcore's input limit: logs the peer and closes
        max_line_length=max_line,  # EchoHandler's own check, kept in step
        **class_attributes,
    )


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive, got %s" % text)
    return value


def parse_arguments(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line *argv* (default: ``sys.argv[1:]``), checked; exits on a bad one."""
    parser = argparse.ArgumentParser(description="Line-echo server on chatcore.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default)")
    parser.add_argument(
        "--max-line",
        type=int,
        default=DEFAULT_MAX_LINE,
        metavar="BYTES",
        help="close a connection whose line grows past this many bytes (default %(default)s)",
    )
    parser.add_argument(
        "--max-seconds",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help="stop serving after this many seconds (default: until interrupted)",
    )
    add_serving_options(parser)
    args = parser.parse_args(argv)
    if args.max_line < 1:
        parser.error("--max-line must be at least 1")
    return args


def handler_for(args: argparse.Namespace, base: type = EchoHandler) -> type:
    """The handler class to serve with: *base* with the limits the parsed command line *args* set."""
    return limited_handler(args.max_line, base, **serving_limits(args))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_arguments(argv)

    # chatcore itself prints nothing: its messages (an over-long line, an
    # exception in a handler) go to the "chatcore" logger, shown here with the
    # server's own lines.
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    channel_map: dict[int, Any] = {}
    try:
        try:
            server = start_echo_server(channel_map, args.host, args.port, handler_for(args))
        except OSError as error:
            print("cannot listen on %s:%d: %s" % (args.host, args.port, error), file=sys.stderr)
            return 1
        host, port = server.address
        print("echo server listening on %s:%d (engine: %s)" % (host, port, chatcore.implementation), flush=True)
        if args.max_seconds is None:
            chatcore.loop(timeout=1.0, map=channel_map)
        else:
            deadline = time.monotonic() + args.max_seconds
            while channel_map and time.monotonic() < deadline:
                chatcore.loop(timeout=min(1.0, args.max_seconds), map=channel_map, count=1)
    except KeyboardInterrupt:
        pass
    finally:
        chatcore.close_all(channel_map)
    return 0


if __name__ == "__main__":
    sys.exit(main())
