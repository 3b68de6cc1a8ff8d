"""Loopback TLS echo benchmark: chatcore's TLS against asyncio's TLS transport and uvloop's.

The echo benchmark (``chatcore.benchmark.echo``) over TLS 1.3: the same
clients (pipelined and ping-pong, every echoed byte checked), the same
push-per-line and write-per-line server bodies, each server in its own
process; only the connections are TLS, and the handshake is done before a
run's clock starts.

* ``chatcore``: the echo handler on ``chatcore.async_chat`` (pushes coalesced
  to the end of a loop turn) that calls ``start_tls(context,
  server_side=True)`` as soon as it is accepted (implicit TLS), served by
  ``chatcore.loop``;
* ``asyncio``: the echo ``Protocol`` behind ``loop.create_server(...,
  ssl=context)``, asyncio's own TLS transport, on its default loop;
* ``uvloop``: the same on uvloop's loop (its own TLS transport), when uvloop
  is installed.

The standard library's asynchat never had TLS, so there is no legacy row:
the ratios are to asyncio.  What each server does per line is what its
users' code does: chatcore gathers a turn's pushes into one
``SSLObject.write`` (one run of TLS records per send), while a
``transport.write`` per line is, in asyncio's and uvloop's TLS transports,
an ``SSLObject.write`` per line.

The server makes its certificate when it starts (with ``trustme``, a
throwaway certificate authority: nothing is stored) and hands the
authority's certificate to the parent in its port file; the clients verify
the server against it, as a TLS client would.  The server side is a command,
as for the echo benchmark::

    python -m chatcore.benchmark.tls serve --server chatcore --port-file PATH
"""

import importlib
import importlib.util
import socket
import ssl
import sys
import time
from typing import Any, Callable, Optional

import chatcore

from .echo import Connector, EchoServerProcess, _listener_class, serve_asyncio_style
from .inprocess import line_echo_handler_class
from .serverproc import (
    DEFAULT_MAX_SECONDS,
    BenchmarkError,
    BenchmarkTimeoutError,
    connect,
    raise_descriptor_limit,
    serve_main,
    start_lifeline,
    write_port_file,
)

__all__ = [
    "SERVERS",
    "SERVER_NAME",
    "TLSEchoServerProcess",
    "available_servers",
    "client_context",
    "main",
    "serve",
    "server_context",
    "tls_connector",
    "unavailable_reason",
]

#: Every TLS echo server this module knows; ``available_servers()`` says which run here.
SERVERS = ("chatcore", "asyncio", "uvloop")
#: The name the server's certificate is for, and the clients ask for.
SERVER_NAME = "localhost"


def unavailable_reason() -> Optional[str]:
    """Why the TLS benchmark cannot run on this Python, or None when it can."""
    if importlib.util.find_spec("trustme") is None:
        return "it makes its certificates with trustme, which is not installed (pip install trustme)"
    return None


def available_servers() -> list[str]:
    """The TLS echo servers this Python can run, chatcore's first (none without trustme)."""
    if unavailable_reason() is not None:
        return []
    servers = ["chatcore", "asyncio"]
    if importlib.util.find_spec("uvloop") is not None:
        servers.append("uvloop")
    return servers


def server_context() -> tuple[ssl.SSLContext, str]:
    """A TLS 1.3 server context with a certificate for SERVER_NAME, and its authority's certificate (PEM)."""
    # Imported by name: optional, and not installed where the types are checked.
    trustme = importlib.import_module("trustme")
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    authority.issue_cert(SERVER_NAME).configure_cert(context)
    return context, authority.cert_pem.bytes().decode("ascii")


def client_context(authority_pem: str) -> ssl.SSLContext:
    """A TLS 1.3 client context that trusts the authority *authority_pem* only, and checks names."""
    context = ssl.create_default_context(cadata=authority_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    return context


def tls_connector(context: ssl.SSLContext) -> Connector:
    """A client ``Connector`` that connects, then completes a TLS handshake with *context*, by the deadline."""

    def connect_tls(port: int, deadline: float) -> socket.socket:
        plain = connect(port, deadline)
        try:
            sock = context.wrap_socket(plain, server_hostname=SERVER_NAME, do_handshake_on_connect=False)
        except BaseException:
            plain.close()
            raise
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchmarkTimeoutError("no time left for the TLS handshake")
            sock.settimeout(remaining)
            try:
                sock.do_handshake()
            except socket.timeout:
                raise BenchmarkTimeoutError("the TLS handshake did not finish in time") from None
            except (ssl.SSLError, OSError) as error:
                raise BenchmarkError("TLS handshake with the server: %s" % error) from error
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    return connect_tls


# --- The servers (they run in the ``serve`` subprocess) ----------------------


def _serve_chatcore(context: ssl.SSLContext, announce: Callable[[int, str], None]) -> None:
    base = line_echo_handler_class(chatcore.async_chat, coalesce_sends=True)

    class ImplicitTLSLineEchoHandler(base):  # type: ignore[misc, valid-type]
        def __init__(self, sock: Optional[socket.socket] = None, map: Optional[dict[int, Any]] = None):
            base.__init__(self, sock, map)
            self.start_tls(context, server_side=True)

    channel_map: dict[int, Any] = {}
    listener = _listener_class(chatcore.dispatcher)(ImplicitTLSLineEchoHandler, channel_map)
    detail = "chatcore %s (%s engine), chatcore.async_chat.start_tls, ac_coalesce_sends=True, Python %s" % (
        chatcore.__version__,
        chatcore.implementation,
        sys.version.split()[0],
    )
    announce(listener.socket.getsockname()[1], detail)
    chatcore.loop(timeout=1.0, map=channel_map)


def serve(server: str, port_file: str, max_seconds: float = DEFAULT_MAX_SECONDS, watch_stdin: bool = True) -> None:
    """Run TLS echo server *server* until the process is ended; see the module docstring."""
    start_lifeline(max_seconds, watch_stdin, "TLS echo server")
    raise_descriptor_limit(1 << 16)
    context, authority_pem = server_context()

    def announce(port: int, detail: str) -> None:
        write_port_file(
            port_file,
            port,
            server,
            "%s; TLS 1.3, %s" % (detail, ssl.OPENSSL_VERSION),
            serves_chatcore=server == "chatcore",
            ac_coalesce_sends=True if server == "chatcore" else None,
            authority_pem=authority_pem,
        )

    if server == "chatcore":
        _serve_chatcore(context, announce)
    else:
        serve_asyncio_style(server, announce, context)


# --- The server process, seen from the benchmark -----------------------------


class TLSEchoServerProcess(EchoServerProcess):
    """A TLS echo server in a child process; its clients connect with ``connector()``."""

    module = "chatcore.benchmark.tls"
    label = "TLS echo server"
    servers = SERVERS
    fault_servers = ()
    available_servers = staticmethod(available_servers)

    def connector(self) -> Connector:
        """Connect and shake hands, trusting the authority the server made (it must have started)."""
        if "authority_pem" not in self.info:
            raise BenchmarkError("the %s has not started: no certificate to trust yet" % self.label)
        return tls_connector(client_context(self.info["authority_pem"]))


# --- Command line ----------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m chatcore.benchmark.tls serve ...``: run one TLS echo server."""
    return serve_main(argv, TLSEchoServerProcess, "Server side of chatcore's loopback TLS echo benchmark.", serve)


if __name__ == "__main__":
    sys.exit(main())
