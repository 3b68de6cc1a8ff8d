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

TLS: with ``--tls-cert CERT --tls-key KEY`` (PEM files; the key may be in
CERT instead) every connection is TLS from its first byte (implicit TLS, as
port 465 or 993 are), and with ``--starttls`` as well a connection is in the
clear until the client sends a ``STARTTLS`` line; the server answers
``220 ready for TLS`` and the TLS handshake follows.  Whatever the client sent
in the clear after its ``STARTTLS`` line is dropped, never echoed as if it
had come over TLS::

    python examples/echo_server.py --port 7000 --tls-cert cert.pem --tls-key key.pem
    openssl s_client -connect 127.0.0.1:7000
    python examples/echo_server.py --port 7000 --tls-cert cert.pem --tls-key key.pem --starttls

(a STARTTLS client sends ``STARTTLS``, reads the ``220`` line, then starts
its handshake on the same connection).

With ``--workers N`` (N > 1) the listener is made first, then
``chatcore.prefork(N)`` forks N worker processes that share the port
(SO_REUSEPORT where the platform has it); the first process only supervises
them, and SIGTERM or Ctrl-C to it stops them all.

The handler and the listener are the public ``EchoHandler``, ``Listener`` and
``start_echo_server`` of ``chatcore.demo`` (the ones ``python -m chatcore
demo`` runs), imported rather than written again; this file adds the line
limit (``limited_handler``), TLS (``ImplicitTLSEchoHandler``,
``StartTLSEchoHandler``, ``tls_server_context``) and the command line
(``parse_arguments``; the handler class it asks for is ``handler_for``).
``start_echo_server`` builds a server on any channel map, so tests can serve
from their own loop.
"""

import argparse
import logging
import socket
import ssl
import sys
from typing import Any, Optional

import chatcore
from chatcore.demo import (
    EchoHandler,
    Listener,
    add_serving_options,
    handler_with,
    serve,
    serving_limits,
    start_echo_server,
)

__all__ = [
    "EchoHandler",
    "ImplicitTLSEchoHandler",
    "Listener",
    "StartTLSEchoHandler",
    "handler_for",
    "limited_handler",
    "main",
    "parse_arguments",
    "start_echo_server",
    "tls_server_context",
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


def tls_server_context(cert_file: str, key_file: Optional[str] = None) -> ssl.SSLContext:
    """A server's TLS context: the library's secure defaults, this certificate chain and key (PEM)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


class ImplicitTLSEchoHandler(EchoHandler):
    """An EchoHandler that is TLS from the first byte: it starts TLS as soon as it is accepted."""

    #: The server's context (``tls_server_context``), set on the class ``handler_for`` makes.
    tls_context: ssl.SSLContext

    def __init__(self, sock: Optional[socket.socket] = None, map: Optional[dict[int, Any]] = None):
        super().__init__(sock, map)
        self.start_tls(self.tls_context, server_side=True)


class StartTLSEchoHandler(EchoHandler):
    """An EchoHandler in the clear until a ``STARTTLS`` line, which it answers ``220``, then TLS."""

    tls_context: ssl.SSLContext

    def handle_line(self, line: bytes) -> None:
        # Lines end in b"\n"; a client that ends them in CRLF leaves the b"\r".
        if self.ssl_object is None and line.rstrip(b"\r") == b"STARTTLS":
            # Sent in the clear: start_tls() sends what was pushed before it first.
            self.push(b"220 ready for TLS\r\n")
            self.start_tls(self.tls_context, server_side=True)
        else:
            super().handle_line(line)


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
    parser.add_argument(
        "--tls-cert",
        metavar="CERT",
        help="serve TLS with this certificate chain (PEM; the server's certificate first)",
    )
    parser.add_argument(
        "--tls-key",
        metavar="KEY",
        help="the private key of --tls-cert (PEM; default: read from the --tls-cert file)",
    )
    parser.add_argument(
        "--starttls",
        action="store_true",
        help="with --tls-cert: serve in the clear until a STARTTLS line, then TLS (default: TLS from the start)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="serve from N forked worker processes (chatcore.prefork); 1 (default): this process serves",
    )
    add_serving_options(parser)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.max_line < 1:
        parser.error("--max-line must be at least 1")
    if args.tls_key is not None and args.tls_cert is None:
        parser.error("--tls-key needs --tls-cert")
    if args.starttls and args.tls_cert is None:
        parser.error("--starttls needs --tls-cert (and --tls-key)")
    return args


def handler_for(args: argparse.Namespace, base: type = EchoHandler) -> type:
    """The handler class to serve with: *base* with the limits and the TLS the parsed command line *args* set.

    With ``--tls-cert`` the certificate and key are loaded here (OSError,
    ``ssl.SSLError`` included, when they cannot be).
    """
    attributes = serving_limits(args)
    if args.tls_cert is not None:
        tls_handler = StartTLSEchoHandler if args.starttls else ImplicitTLSEchoHandler
        base = type(base.__name__, (tls_handler, base), {})
        attributes["tls_context"] = tls_server_context(args.tls_cert, args.tls_key)
    return limited_handler(args.max_line, base, **attributes)


def _tls_mode(args: argparse.Namespace) -> str:
    if args.tls_cert is None:
        return ""
    return ", STARTTLS" if args.starttls else ", implicit TLS"


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_arguments(argv)

    # chatcore itself prints nothing: its messages (an over-long line, an
    # exception in a handler) go to the "chatcore" logger, shown here with the
    # server's own lines.
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        handler_class = handler_for(args)
    except OSError as error:  # ssl.SSLError is one
        print("cannot load the TLS certificate and key: %s" % error, file=sys.stderr)
        return 1
    channel_map: dict[int, Any] = {}
    try:
        try:
            server = start_echo_server(channel_map, args.host, args.port, handler_class)
        except OSError as error:
            print("cannot listen on %s:%d: %s" % (args.host, args.port, error), file=sys.stderr)
            return 1
        host, port = server.address
        print(
            "echo server listening on %s:%d (engine: %s%s)" % (host, port, chatcore.implementation, _tls_mode(args)),
            flush=True,
        )

        def serve_here() -> None:
            serve(channel_map, args.event_loop, args.max_seconds)

        if args.workers > 1:
            print("serving from %d worker processes" % args.workers, flush=True)
            chatcore.prefork(args.workers, map=channel_map, serve=serve_here)
        else:
            serve_here()
    except KeyboardInterrupt:
        pass
    finally:
        chatcore.close_all(channel_map)
    return 0


if __name__ == "__main__":
    sys.exit(main())
