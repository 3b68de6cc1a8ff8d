"""Loopback echo through ``chatcore.aio``: the same chatcore server on chatcore.loop(), asyncio and uvloop.

The echo benchmark (``chatcore.benchmark.echo``) with one server body, the
push-per-line ``chatcore.async_chat`` echo handler (pushes coalesced to the
end of a loop turn), served three ways, each in its own process:

* ``chatcore``: by ``chatcore.loop()``, the reference of the ratios;
* ``aio-asyncio``: by ``await chatcore.aio.loop()`` on asyncio's default loop;
* ``aio-uvloop``: the same on uvloop's loop, when uvloop is installed.

What the ratio shows is what serving legacy channels on an asyncio loop
costs: the same turns, plus asyncio's own wait for the poller's descriptor
and its callbacks.  The server side is a command, as for the echo benchmark::

    python -m chatcore.benchmark.aio serve --server aio-asyncio --port-file PATH
"""

import importlib.util
import sys
from typing import Any, Optional

import chatcore

from .echo import EchoServerProcess, _listener_class
from .inprocess import line_echo_handler_class
from .serverproc import DEFAULT_MAX_SECONDS, raise_descriptor_limit, serve_main, start_lifeline, write_port_file

__all__ = ["SERVERS", "AioEchoServerProcess", "available_servers", "main", "serve"]

#: Every server this module knows; ``available_servers()`` says which run here.
SERVERS = ("chatcore", "aio-asyncio", "aio-uvloop")


def available_servers() -> list[str]:
    """The servers this Python can run: chatcore.loop()'s and asyncio's, and uvloop's when installed."""
    servers = ["chatcore", "aio-asyncio"]
    if importlib.util.find_spec("uvloop") is not None:
        servers.append("aio-uvloop")
    return servers


def serve(server: str, port_file: str, max_seconds: float = DEFAULT_MAX_SECONDS, watch_stdin: bool = True) -> None:
    """Run echo server *server* until the process is ended; see the module docstring."""
    start_lifeline(max_seconds, watch_stdin, "echo server")
    raise_descriptor_limit(1 << 16)
    handler_class = line_echo_handler_class(chatcore.async_chat, coalesce_sends=True)
    channel_map: dict[int, Any] = {}
    listener = _listener_class(chatcore.dispatcher)(handler_class, channel_map)
    python = "Python %s" % sys.version.split()[0]
    served_by = "chatcore %s (%s engine), ac_coalesce_sends=True" % (chatcore.__version__, chatcore.implementation)
    if server == "chatcore":
        detail = "%s, chatcore.loop(), %s" % (served_by, python)
    else:
        import asyncio

        from chatcore import aio

        if server == "aio-uvloop":
            import uvloop

            event_loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            kind = "uvloop %s" % getattr(uvloop, "__version__", "?")
        else:
            event_loop = asyncio.new_event_loop()
            kind = "asyncio %s" % type(event_loop).__name__
        detail = "%s, chatcore.aio.loop() on %s, %s" % (served_by, kind, python)
    write_port_file(
        port_file,
        listener.socket.getsockname()[1],
        server,
        detail,
        serves_chatcore=True,
        ac_coalesce_sends=True,
    )
    # Select semantics, as the echo suite's chatcore rows; the listener keeps
    # the map non-empty, so neither loop returns: the lifeline ends the process.
    if server == "chatcore":
        chatcore.loop(timeout=1.0, map=channel_map)
        return
    try:
        event_loop.run_until_complete(aio.loop(channel_map, timeout=1.0))
    finally:
        event_loop.close()


class AioEchoServerProcess(EchoServerProcess):
    """An echo server of this module in a child process (plain TCP, as the echo suite's)."""

    module = "chatcore.benchmark.aio"
    label = "chatcore.aio echo server"
    servers = SERVERS
    fault_servers = ()
    available_servers = staticmethod(available_servers)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m chatcore.benchmark.aio serve ...``: run one echo server."""
    return serve_main(
        argv, AioEchoServerProcess, "Server side of chatcore's loopback chatcore.aio echo benchmark.", serve
    )


if __name__ == "__main__":
    sys.exit(main())
