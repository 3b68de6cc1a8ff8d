"""A line-echo server on chatcore: every line a client sends comes straight back.

Run it and talk to it with any line-based client::

    python examples/echo_server.py --port 7000
    nc 127.0.0.1 7000

With ``--port 0`` (the default) the kernel picks a free port, which is printed.
The server classes live in ``chatcore.demo`` (``python -m chatcore demo`` uses
the same ones); ``start_echo_server`` builds a server on any channel map, so
tests can serve from their own loop.
"""

import argparse
import sys
from typing import List, Optional

import chatcore
from chatcore.demo import EchoHandler, Listener, start_echo_server

__all__ = ["EchoHandler", "Listener", "main", "start_echo_server"]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Line-echo server on chatcore.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default)")
    args = parser.parse_args(argv)

    channel_map: dict = {}
    try:
        try:
            server = start_echo_server(channel_map, args.host, args.port)
        except OSError as error:
            print("cannot listen on %s:%d: %s" % (args.host, args.port, error), file=sys.stderr)
            return 1
        host, port = server.address
        print("echo server listening on %s:%d (engine: %s)" % (host, port, chatcore.implementation), flush=True)
        chatcore.loop(timeout=1.0, map=channel_map)
    except KeyboardInterrupt:
        pass
    finally:
        chatcore.close_all(channel_map)
    return 0


if __name__ == "__main__":
    sys.exit(main())
