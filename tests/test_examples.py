"""The examples and ``python -m chatcore demo``, driven over real loopback sockets.

The servers run in-process on a private channel map.  The event loop turns in
the test thread while a client thread does blocking socket I/O with timeouts,
so a failure in the server shows up as an assertion here, never as a hang:
every wait is bounded by a socket timeout or a deadline, and every socket,
thread and channel is closed on the way out.  The handlers run on both
framing engines (the ``engine`` fixture of conftest.py).
"""

import importlib.util
import os
import random
import re
import select
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NamedTuple

import pytest
from helpers.serving import serve_and_receive, serve_until
from helpers.sockets import receive_exactly, receive_until_closed

import chatcore
from chatcore import demo
from chatcore.__main__ import main as cli_main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
#: Upper bound for any single wait: generous, only reached when something is broken.
WAIT = 20.0


def _load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("chatcore_example_" + name, EXAMPLES / (name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


echo_server = _load_example("echo_server")
http_static = _load_example("http_static")


# Driving the loop --------------------------------------------------------------


def serve_while(channel_map: dict[int, Any], *clients: Callable[[], Any]) -> list[Any]:
    """Run each client function in its own thread while the loop turns here; their results.

    A client's exception is re-raised here.  Clients must bound their own
    waits (socket timeouts), so the threads end even if the server misbehaves.
    """
    results: list[Any] = [None] * len(clients)
    errors: list[BaseException] = []

    def run(index: int, client: Callable[[], Any]) -> None:
        try:
            results[index] = client()
        except BaseException as error:  # handed to the test thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(index, client), daemon=True) for index, client in enumerate(clients)]
    for thread in threads:
        thread.start()
    try:
        serve_until(channel_map, lambda: not any(t.is_alive() for t in threads), what="the clients")
    finally:
        for thread in threads:
            thread.join(WAIT)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"
    if errors:
        raise errors[0]
    return results


def connect(address: Any) -> socket.socket:
    client = socket.create_connection(address, timeout=WAIT)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


@pytest.fixture
def channel_map():
    channels: dict[int, Any] = {}
    try:
        yield channels
    finally:
        chatcore.close_all(channels, ignore_all=True)


# Echo server -------------------------------------------------------------------


@pytest.fixture
def echo_handler(engine):
    return type("EchoHandler", (echo_server.EchoHandler,), {"_engine": engine})


def test_echo_example_reuses_the_demo_server():
    assert echo_server.EchoHandler is demo.EchoHandler
    assert echo_server.start_echo_server is demo.start_echo_server


def test_echo_many_pipelined_lines(channel_map, echo_handler):
    server = echo_server.start_echo_server(channel_map, handler_class=echo_handler)
    lines = [b"line %d %s" % (i, b"x" * (i % 300)) for i in range(5000)]
    payload = b"".join(line + b"\n" for line in lines)

    def client() -> bytes:
        with connect(server.address) as sock:
            sock.sendall(payload)  # every line in flight before any echo is read
            return receive_exactly(sock, len(payload))

    (echoed,) = serve_while(channel_map, client)
    assert echoed == payload


def test_echo_lines_split_at_random_points(channel_map, echo_handler):
    server = echo_server.start_echo_server(channel_map, handler_class=echo_handler)
    payload = b"".join(b"%d:%s\n" % (i, b"y" * (i % 97)) for i in range(2000))
    generator = random.Random(1234)

    def client() -> bytes:
        with connect(server.address) as sock:
            offset = 0
            while offset < len(payload):
                step = generator.randint(1, 120)
                sock.sendall(payload[offset : offset + step])
                offset += step
            return receive_exactly(sock, len(payload))

    (echoed,) = serve_while(channel_map, client)
    assert echoed == payload


def test_echo_line_split_across_reads(channel_map, echo_handler):
    """Each piece is read by the server before the next is sent: lines really span reads."""
    handlers: list[Any] = []

    class CountingHandler(echo_handler):
        reads = 0

        def __init__(self, *args: Any, **kwargs: Any):
            echo_handler.__init__(self, *args, **kwargs)
            handlers.append(self)

        def handle_read(self) -> None:
            self.reads += 1
            echo_handler.handle_read(self)

    server = echo_server.start_echo_server(channel_map, handler_class=CountingHandler)
    pieces = [b"hel", b"lo", b" wor", b"ld\nsec", b"ond", b"\n\nthi", b"r", b"d\n", b"\n"]
    with connect(server.address) as sock:
        serve_until(channel_map, lambda: handlers, what="the connection to be accepted")
        handler = handlers[0]
        for piece in pieces:
            reads_before = handler.reads
            sock.sendall(piece)
            serve_until(channel_map, lambda count=reads_before: handler.reads > count, what="the server to read")
        expected = b"hello world\nsecond\n\nthird\n\n"
        assert receive_exactly(sock, len(expected)) == expected
    assert handler.reads >= len(pieces)


def test_echo_concurrent_connections(channel_map, echo_handler):
    server = echo_server.start_echo_server(channel_map, handler_class=echo_handler)

    def client_for(number: int) -> Callable[[], bytes]:
        def client() -> bytes:
            with connect(server.address) as sock:
                lines = b"".join(b"client %d line %d\n" % (number, i) for i in range(500))
                sock.sendall(lines)
                return receive_exactly(sock, len(lines))

        return client

    echoed = serve_while(channel_map, *(client_for(number) for number in range(5)))
    for number, data in enumerate(echoed):
        assert data == b"".join(b"client %d line %d\n" % (number, i) for i in range(500))


def test_echo_closes_connection_on_overlong_line(channel_map, echo_handler):
    limited = type("LimitedEchoHandler", (echo_handler,), {"max_line_length": 64})
    server = echo_server.start_echo_server(channel_map, handler_class=limited)

    def client() -> bytes:
        with connect(server.address) as sock:
            sock.sendall(b"short\n")
            echoed = receive_exactly(sock, 6)
            sock.sendall(b"z" * 65)
            return echoed + receive_until_closed(sock)

    (received,) = serve_while(channel_map, client)
    assert received == b"short\n"
    serve_until(channel_map, lambda: len(channel_map) == 1, what="the server to drop the channel")


# HTTP static server ------------------------------------------------------------

SECRET = b"TOP SECRET: this file lives outside the served root\n"
HELLO = b"Hello, chatcore!\n"
BIG_SIZE = 3 * 1024 * 1024


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes


def parse_response(raw: bytes) -> Response:
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, "no complete response head in %r" % raw[:200]
    lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(status), headers, body, raw)


class Site(NamedTuple):
    root: Path
    secret: Path
    big: bytes
    symlinks: bool


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Site:
    base = tmp_path_factory.mktemp("http")
    secret = base / "secret.txt"
    secret.write_bytes(SECRET)
    root = base / "root"
    root.mkdir()
    (root / "hello.txt").write_bytes(HELLO)
    (root / "page.html").write_bytes(b"<p>page</p>\n")
    (root / "with space.txt").write_bytes(b"spaced\n")
    (root / "sub").mkdir()
    (root / "sub" / "index.html").write_bytes(b"<p>sub index</p>\n")
    (root / "empty").mkdir()
    big = random.Random(99).getrandbits(8 * BIG_SIZE).to_bytes(BIG_SIZE, "little")
    (root / "big.bin").write_bytes(big)
    try:
        os.symlink(str(secret), str(root / "leak.txt"))
        os.symlink("..", str(root / "parent"))
        os.symlink("hello.txt", str(root / "alias.txt"))
        (root / "linked").mkdir()
        os.symlink(str(secret), str(root / "linked" / "index.html"))
        symlinks = True
    except (OSError, NotImplementedError):  # Windows without the privilege
        symlinks = False
    return Site(root, secret, big, symlinks)


class HTTPServer:
    """A static server on a private map, and a way to send it raw requests."""

    def __init__(self, channel_map: dict[int, Any], root: Path, handler_class: type):
        self.channel_map = channel_map
        self.listener = http_static.start_http_server(str(root), channel_map, handler_class=handler_class)

    def exchange_raw(self, request: bytes, half_close: bool = False) -> bytes:
        """Send *request*, optionally shut down the sending side, read until the server closes."""

        def client() -> bytes:
            with connect(self.listener.address) as sock:
                sock.sendall(request)
                if half_close:
                    sock.shutdown(socket.SHUT_WR)
                return receive_until_closed(sock)

        (raw,) = serve_while(self.channel_map, client)
        return raw

    def exchange(self, request: bytes, half_close: bool = False) -> Response:
        return parse_response(self.exchange_raw(request, half_close))

    def get(self, target: str, method: str = "GET") -> Response:
        return self.exchange(("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % (method, target)).encode("latin-1"))


@pytest.fixture
def http_handler(engine):
    return type("HTTPRequestHandler", (http_static.HTTPRequestHandler,), {"_engine": engine})


@pytest.fixture
def http_server(channel_map, site, http_handler) -> HTTPServer:
    return HTTPServer(channel_map, site.root, http_handler)


def test_http_get_file(http_server):
    response = http_server.get("/hello.txt")
    assert response.status == 200
    assert response.body == HELLO
    assert response.headers["content-length"] == str(len(HELLO))
    assert response.headers["content-type"] == "text/plain"
    assert response.headers["connection"] == "close"
    assert "last-modified" in response.headers and "date" in response.headers


def test_http_get_html_with_query_and_escapes(http_server):
    response = http_server.get("/page.html?version=2")
    assert response.status == 200
    assert response.headers["content-type"] == "text/html"
    assert response.body == b"<p>page</p>\n"
    assert http_server.get("/with%20space.txt").body == b"spaced\n"


def test_http_10_request_without_host(http_server):
    response = http_server.exchange(b"GET /hello.txt HTTP/1.0\r\n\r\n")
    assert response.status == 200
    assert response.body == HELLO


def test_http_head(http_server):
    response = http_server.get("/hello.txt", method="HEAD")
    assert response.status == 200
    assert response.headers["content-length"] == str(len(HELLO))
    assert response.body == b""


def test_http_directory_index(http_server):
    for target in ("/sub/", "/sub"):
        response = http_server.get(target)
        assert response.status == 200
        assert response.body == b"<p>sub index</p>\n"
    assert http_server.get("/empty/").status == 404


def test_http_missing_file(http_server):
    response = http_server.get("/no-such-file.txt")
    assert response.status == 404
    assert response.body == b"404 Not Found\n"
    assert response.headers["content-length"] == str(len(response.body))
    head = http_server.get("/no-such-file.txt", method="HEAD")
    assert head.status == 404 and head.body == b""


@pytest.mark.parametrize(
    "target",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E%2Fsecret.txt",
        "/..%2fsecret.txt",
        "/sub/../../secret.txt",
        "/./../secret.txt",
        "//etc/passwd",
        "http://127.0.0.1/../secret.txt",
    ],
)
def test_http_traversal_is_refused(http_server, target):
    response = http_server.get(target)
    assert response.status in (403, 404)
    assert SECRET not in response.raw
    assert b"root:" not in response.raw


def test_http_absolute_path_stays_inside_root(http_server, site):
    response = http_server.get("/" + site.secret.as_posix())
    assert response.status in (403, 404)
    assert SECRET not in response.raw


def test_http_symlinks(http_server, site):
    if not site.symlinks:
        pytest.skip("cannot create symlinks here")
    for target in ("/leak.txt", "/parent/secret.txt", "/linked/"):
        response = http_server.get(target)
        assert response.status in (403, 404), target
        assert SECRET not in response.raw
    # What counts is where a path resolves to: these stay inside the root.
    assert http_server.get("/alias.txt").body == HELLO
    assert http_server.get("/parent/root/hello.txt").body == HELLO


def test_http_other_methods(http_server):
    for method in ("POST", "PUT", "DELETE", "get"):
        response = http_server.get("/hello.txt", method=method)
        assert response.status == 405, method
        assert response.headers["allow"] == "GET, HEAD"
        assert HELLO not in response.body


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /hello.txt\r\n\r\n",
        b"GET  /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello.txt HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        b"GET hello.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello.txt HTTX/1.1\r\nHost: x\r\n\r\n",
        b"G(ET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello.txt HTTP/1.1\r\n\r\n",
        b"GET /hello.txt HTTP/1.1\r\nHost x\r\n\r\n",
        b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",
        b"GET /hel\xfflo.txt HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /hello.txt%00.html HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\r\n\r\n",
    ],
)
def test_http_malformed_requests(http_server, request_bytes):
    response = http_server.exchange(request_bytes)
    assert response.status == 400
    assert response.body == b"400 Bad Request\n"


def test_http_unsupported_version(http_server):
    response = http_server.exchange(b"GET /hello.txt HTTP/2.0\r\nHost: x\r\n\r\n")
    assert response.status == 505


def test_http_oversized_head(channel_map, site, http_handler):
    limited = type("LimitedHandler", (http_handler,), {"max_head_size": 1024})
    server = HTTPServer(channel_map, site.root, limited)
    # Exactly one byte over the limit, so the server has read everything it
    # was sent when it answers and closes (unread data would reset the connection).
    start = b"GET /hello.txt HTTP/1.1\r\nX-Filler: "
    response = server.exchange(start + b"a" * (1025 - len(start)))
    assert response.status == 431


def test_http_large_file_arrives_intact(http_server, site):
    response = http_server.get("/big.bin")
    assert response.status == 200
    assert response.headers["content-length"] == str(BIG_SIZE)
    assert response.headers["content-type"] == "application/octet-stream"
    assert len(response.body) == BIG_SIZE
    assert response.body == site.big


def test_http_client_half_closing_after_request_gets_everything(http_server, site):
    response = http_server.exchange(b"GET /big.bin HTTP/1.0\r\n\r\n", half_close=True)
    assert response.status == 200
    assert response.body == site.big


def test_http_client_half_closing_before_request_end_gets_nothing(http_server):
    assert http_server.exchange_raw(b"GET /hello.txt HTTP/1.1\r\nHo", half_close=True) == b""
    assert len(http_server.channel_map) == 1


def test_http_pipelined_second_request_is_ignored(http_server):
    request = b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n"
    response = http_server.exchange(request + request.replace(b"hello", b"page"))
    assert response.status == 200
    assert response.body == HELLO  # one response, then the connection closed


def test_http_client_leaving_mid_transfer_closes_the_file(channel_map, site, http_handler):
    queued: list[Any] = []

    class SmallBufferHandler(http_handler):
        def push_file(self, file: Any, *args: Any, **kwargs: Any) -> None:
            http_handler.push_file(self, file, *args, **kwargs)
            queued.append((file, self.producer_fifo[-1]))

        def __init__(self, *args: Any, **kwargs: Any):
            http_handler.__init__(self, *args, **kwargs)
            # Small kernel buffers: the 3 MiB cannot all be sent before the client leaves.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)

    server = HTTPServer(channel_map, site.root, SmallBufferHandler)

    def client() -> bytes:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.settimeout(WAIT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.connect(server.listener.address)
            sock.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
            return sock.recv(100)

    (first,) = serve_while(channel_map, client)
    assert first.startswith(b"HTTP/1.1 200 ")
    serve_until(channel_map, lambda: len(channel_map) == 1, what="the server to drop the channel")
    [(file, entry)] = queued
    assert entry.remaining > 0, "the whole file was sent; the test proves nothing"
    assert file.closed


def test_resolve_path_refuses_outside_root(site):
    root = os.path.realpath(str(site.root))
    assert http_static.resolve_path(root, "/hello.txt") == os.path.join(root, "hello.txt")
    assert http_static.resolve_path(root, "/../secret.txt") is None
    assert http_static.resolve_path(root, "//" + site.secret.as_posix()) is None
    assert http_static.resolve_path(root, "/empty") is None
    if site.symlinks:
        assert http_static.resolve_path(root, "/leak.txt") is None
        assert http_static.resolve_path(root, "/linked") is None


def test_http_keeps_reading_lines_until_the_empty_one(http_server):
    # A head split anywhere, the CR of a CRLF included, is put together line by line.
    response = http_server.exchange(b"GET /hello.txt HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
    assert response.status == 200 and response.body == HELLO


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /hello.txt HTTP/1.0\n\n",
        b"GET /hello.txt HTTP/1.1\nHost: x\n\n",
        b"GET /hello.txt HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /hello.txt HTTP/1.1\nHost: x\r\nAccept: */*\n\n",
        b"\nGET /hello.txt HTTP/1.0\n\n",
        b"\r\nGET /hello.txt HTTP/1.0\r\n\r\n",
    ],
    ids=["lf", "lf-host", "crlf-then-lf", "mixed", "leading-lf", "leading-crlf"],
)
def test_http_bare_lf_and_mixed_line_endings_are_answered(http_server, request_bytes):
    response = http_server.exchange(request_bytes)
    assert response.status == 200
    assert response.body == HELLO


@pytest.mark.parametrize("request_bytes", [b"\n\n", b"\r\n\n", b"\n\r\n"])
def test_http_nothing_but_empty_lines_is_a_bad_request(http_server, request_bytes):
    assert http_server.exchange(request_bytes).status == 400


def test_http_parse_request_head_takes_lines():
    request = http_static.parse_request_head([b"GET /a%20b?q=1 HTTP/1.1", b"Host: x", b"X-Thing:  spaced\t"])
    assert request == http_static.Request("GET", "/a b", (1, 1), {"host": "x", "x-thing": "spaced"})
    with pytest.raises(http_static.RequestError) as error:
        http_static.parse_request_head([])
    assert error.value.status == 400


def serve_http(channel_map: dict[int, Any], site: Site, handler: type, *argv: str) -> demo.Listener:
    """http_static's server for *site* on *channel_map*, with *handler* set up as command line *argv* says."""
    options = http_static.parse_arguments(["--root", str(site.root), *argv])
    return http_static.start_http_server(
        str(site.root), channel_map, handler_class=http_static.handler_for(options, handler)
    )


def slowloris(address: Any, head: bytes, interval: float = 0.1) -> tuple[int, bytes]:
    """Send *head* one byte per *interval* until the server answers; (bytes sent, what came back).

    Stops at the first sign of an answer, so the server never reads a byte
    after it closed (that would reset the connection).  Fails if *head* is
    sent entirely before the server answers.
    """
    with connect(address) as sock:
        for sent in range(len(head)):
            readable, _, _ = select.select([sock], [], [], interval)
            if readable:
                return sent, receive_until_closed(sock)
            sock.sendall(head[sent : sent + 1])
    raise AssertionError("the server let %d bytes trickle in without answering" % len(head))


def test_http_slowloris_is_answered_408_at_the_head_deadline(channel_map, site, http_handler):
    # The idle timeout (60 s) never fires here: a byte arrives every 0.1 s.
    server = serve_http(channel_map, site, http_handler, "--head-timeout", "0.5")
    trickle = b"GET /hello.txt HTTP/1.1\r\nX-Slow: " + b"a" * 200

    (outcome,) = serve_while(channel_map, lambda: slowloris(server.address, trickle))
    sent, received = outcome
    response = parse_response(received)
    assert response.status == 408
    assert response.headers["connection"] == "close"
    assert 0 < sent < len(trickle)
    serve_until(channel_map, lambda: len(channel_map) == 1, what="the server to drop the channel")


def test_http_silent_client_is_answered_408(channel_map, site, http_handler):
    server = serve_http(channel_map, site, http_handler, "--head-timeout", "0.3")

    def client() -> bytes:
        with connect(server.address) as sock:
            return receive_until_closed(sock)

    (received,) = serve_while(channel_map, client)
    assert parse_response(received).status == 408


def test_http_head_deadline_ends_with_the_head(channel_map, site, http_handler):
    """A download the client is slow to read is not cut by the deadline of its (complete) head."""
    server = serve_http(channel_map, site, http_handler, "--head-timeout", "0.2")

    def client() -> bytes:
        with connect(server.address) as sock:
            sock.sendall(b"GET /big.bin HTTP/1.0\r\n\r\n")
            time.sleep(0.5)  # past the deadline, with most of the file still queued
            return receive_until_closed(sock)

    (raw,) = serve_while(channel_map, client)
    response = parse_response(raw)
    assert response.status == 200
    assert response.body == site.big


# Idle timeout and output limit, as both examples take them ----------------------


class ServedExample(NamedTuple):
    """An example server whose command line a test chooses, served on the test's channel map."""

    module: ModuleType
    #: Its handler class, on the engine under test.
    base: type
    #: What its command line needs besides the options a test gives.
    argv: list[str]
    start: Callable[[dict[int, Any], type], demo.Listener]

    def options(self, *argv: str) -> Any:
        return self.module.parse_arguments(self.argv + list(argv))

    def handler_class(self, *argv: str) -> type:
        return self.module.handler_for(self.options(*argv), self.base)  # type: ignore[no-any-return]

    def serve(self, channel_map: dict[int, Any], *argv: str) -> demo.Listener:
        return self.start(channel_map, self.handler_class(*argv))


@pytest.fixture(params=["echo_server", "http_static"])
def example(request, site, echo_handler, http_handler) -> ServedExample:
    if request.param == "echo_server":
        return ServedExample(
            echo_server,
            echo_handler,
            [],
            lambda channel_map, handler: echo_server.start_echo_server(channel_map, handler_class=handler),
        )
    root = str(site.root)
    return ServedExample(
        http_static,
        http_handler,
        ["--root", root],
        lambda channel_map, handler: http_static.start_http_server(root, channel_map, handler_class=handler),
    )


def test_limits_default_to_a_minute_idle_and_a_mebibyte_queued(example):
    options = example.options()
    assert (options.idle_timeout, options.max_output) == (60, 1048576)
    assert (demo.DEFAULT_IDLE_TIMEOUT, demo.DEFAULT_MAX_OUTPUT) == (60, 1048576)
    handler = example.handler_class()
    assert issubclass(handler, example.base) and handler.__name__ == example.base.__name__
    assert handler.ac_idle_timeout == 60
    assert handler.ac_max_output_buffer == 1048576


def test_http_head_deadline_defaults_to_ten_seconds(site):
    options = http_static.parse_arguments(["--root", str(site.root)])
    assert options.head_timeout == 10
    assert http_static.handler_for(options).head_timeout == 10


def test_limit_options_reach_every_accepted_connection(example, channel_map):
    server = example.serve(channel_map, "--idle-timeout", "2.5", "--max-output", "4096")
    with connect(server.address), connect(server.address):
        serve_until(channel_map, lambda: len(channel_map) == 3, what="both connections to be accepted")
    handlers = [channel for channel in channel_map.values() if channel is not server]
    assert [type(handler).__mro__[1] for handler in handlers] == [example.base] * 2
    assert [(handler.ac_idle_timeout, handler.ac_max_output_buffer) for handler in handlers] == [(2.5, 4096)] * 2


def test_limit_options_zero_turns_them_off(example):
    handler = example.handler_class("--idle-timeout", "0", "--max-output", "0")
    assert handler.ac_idle_timeout is None
    assert handler.ac_max_output_buffer is None
    if example.module is http_static:
        assert example.handler_class("--head-timeout", "0").head_timeout is None


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "ten", ""])
def test_limit_options_refuse_what_is_not_a_size_or_a_duration(example, value, capsys):
    flags = ["--idle-timeout", "--max-output"] + (["--head-timeout"] if example.module is http_static else [])
    for flag in flags:
        with pytest.raises(SystemExit) as exit_info:
            example.options(flag, value)
        assert exit_info.value.code == 2
        assert flag in capsys.readouterr().err


def test_idle_connection_is_closed_after_the_idle_timeout(example, channel_map):
    head_deadline_off = ["--head-timeout", "0"] if example.module is http_static else []
    server = example.serve(channel_map, "--idle-timeout", "0.3", *head_deadline_off)

    def client() -> bytes:
        with connect(server.address) as sock:
            return receive_until_closed(sock)  # the socket timeout (20 s) fails the test

    (received,) = serve_while(channel_map, client)
    assert received == b""
    serve_until(channel_map, lambda: len(channel_map) == 1, what="the server to drop the channel")


def test_echo_connection_goes_idle_after_talking(channel_map, echo_handler):
    options = echo_server.parse_arguments(["--idle-timeout", "0.3"])
    server = echo_server.start_echo_server(channel_map, handler_class=echo_server.handler_for(options, echo_handler))

    def client() -> bytes:
        with connect(server.address) as sock:
            for number in range(3):
                sock.sendall(b"line %d\n" % number)
                assert receive_exactly(sock, 7) == b"line %d\n" % number
            return receive_until_closed(sock)

    (rest,) = serve_while(channel_map, client)
    assert rest == b""


def test_echo_stops_reading_from_a_client_that_does_not_read(channel_map, echo_handler):
    limit = 64 * 1024
    handlers: list[Any] = []

    class SmallSendBuffer(echo_handler):
        def __init__(self, *args: Any, **kwargs: Any):
            echo_handler.__init__(self, *args, **kwargs)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
            handlers.append(self)

    options = echo_server.parse_arguments(["--max-output", str(limit)])
    server = echo_server.start_echo_server(channel_map, handler_class=echo_server.handler_for(options, SmallSendBuffer))
    # Inherited by the accepted socket: the kernel cannot hold megabytes on the server's side.
    server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    payload = (b"x" * 1023 + b"\n") * 4096  # 4 MiB, far more than every buffer on the way
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        client.settimeout(WAIT)
        client.connect(server.address)
        client.setblocking(False)
        sent = 0
        refused_in_a_row = 0

        def client_is_stuck() -> bool:
            nonlocal sent, refused_in_a_row
            if sent == len(payload):
                return True  # the server read everything: the assertions below say so
            try:
                sent += client.send(payload[sent : sent + 65536])
                refused_in_a_row = 0
            except BlockingIOError:
                refused_in_a_row += 1
            return refused_in_a_row >= 20

        serve_until(channel_map, client_is_stuck, what="the client's sends to be refused")
        (handler,) = handlers
        # One read's worth of echo may join the queue after it passed the limit.
        assert handler.output_buffer_size <= limit + 2 * handler.ac_in_buffer_size
        assert sent < len(payload) // 4, "the server went on reading a client that reads nothing"
        # Nothing is lost: once the client reads, the server reads again and echoes all.
        whole_lines = payload[: payload.rindex(b"\n", 0, sent) + 1]
        assert serve_and_receive(channel_map, client, len(whole_lines)) == whole_lines


# Accepting in batches ----------------------------------------------------------


class ScriptedAccepts:
    """Stands in for ``dispatcher.accept``: *ready* connections, then None; counts its calls."""

    def __init__(self, ready: int):
        self.ready = ready
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        if self.ready == 0:
            return None
        self.ready -= 1
        return object(), ("127.0.0.1", self.ready)


@pytest.fixture
def scripted_listener(channel_map):
    accepted: list[Any] = []
    listener = demo.Listener(lambda sock, map: accepted.append(sock), map=channel_map)
    return listener, accepted


def test_listener_accepts_until_nobody_waits(scripted_listener):
    listener, accepted = scripted_listener
    listener.accept = ScriptedAccepts(5)
    listener.handle_accept()
    assert len(accepted) == 5
    assert listener.accept.calls == 6  # the sixth said None: no retry before the next event


def test_listener_stops_at_the_first_none(scripted_listener):
    # What accept() answers when the process runs out of descriptors, too.
    listener, accepted = scripted_listener
    listener.accept = ScriptedAccepts(0)
    listener.handle_accept()
    assert accepted == [] and listener.accept.calls == 1


def test_listener_takes_at_most_a_batch_per_event(scripted_listener):
    listener, accepted = scripted_listener
    listener.accept = ScriptedAccepts(1000)
    listener.handle_accept()
    assert len(accepted) == listener.accept.calls == demo.Listener.accept_batch == 64


def test_listener_stops_when_a_handler_closes_it(channel_map):
    listener = demo.Listener(lambda sock, map: listener.close(), map=channel_map)
    accepts = ScriptedAccepts(10)
    listener.accept = accepts
    listener.handle_accept()
    assert accepts.calls == 1


def test_echo_serves_200_connections_opened_at_once(channel_map, echo_handler):
    server = echo_server.start_echo_server(channel_map, handler_class=echo_handler)
    batches: list[int] = []
    accept_one_batch = server.handle_accept

    def counted_accept() -> None:
        before = len(channel_map)
        accept_one_batch()
        batches.append(len(channel_map) - before)

    server.handle_accept = counted_accept
    clients: list[socket.socket] = []
    try:
        # All connecting before the loop turns: more than the 128 backlog wait together.
        for _ in range(200):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            clients.append(sock)
            sock.setblocking(False)
            sock.connect_ex(server.address)
        serve_until(channel_map, lambda: len(channel_map) == 201, what="200 connections to be accepted")
        assert max(batches) > 1

        def talk() -> list[bytes]:
            for number, sock in enumerate(clients):
                sock.settimeout(WAIT)
                sock.sendall(b"client %d\n" % number)
            return [receive_exactly(sock, len(b"client %d\n" % number)) for number, sock in enumerate(clients)]

        (echoes,) = serve_while(channel_map, talk)
        assert echoes == [b"client %d\n" % number for number in range(200)]
    finally:
        for sock in clients:
            sock.close()


# The scripts, run as a user runs them --------------------------------------------


class ScriptServer:
    """An example script in a child process; ``address`` is where it listens."""

    def __init__(self, script: str, *argv: str):
        self.process = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), "--port", "0", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        # The first line names the port; a script that fails to start ends the pipe instead.
        first = self.process.stdout.readline().decode()
        port = re.search(r":([0-9]+)\b", first)
        if port is None:
            self.stop()
            raise AssertionError("%s did not start: %r %r" % (script, first, self.output))
        self.address = ("127.0.0.1", int(port.group(1)))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
        self.output = self.process.communicate(timeout=WAIT)[0].decode()


def test_echo_script_takes_the_idle_timeout_from_its_command_line():
    server = ScriptServer("echo_server.py", "--idle-timeout", "0.3", "--max-seconds", str(WAIT))
    try:
        with connect(server.address) as sock:
            sock.sendall(b"ping\n")
            assert receive_exactly(sock, 5) == b"ping\n"
            assert receive_until_closed(sock) == b""
    finally:
        server.stop()
    assert "Traceback" not in server.output


def test_http_script_takes_the_head_deadline_from_its_command_line(site):
    server = ScriptServer("http_static.py", "--root", str(site.root), "--head-timeout", "0.3")
    try:
        with connect(server.address) as sock:
            assert parse_response(receive_until_closed(sock)).status == 408
    finally:
        server.stop()


# python -m chatcore demo -------------------------------------------------------


def test_demo_in_process(engine):
    handler = type("EchoHandler", (demo.EchoHandler,), {"_engine": engine})
    result = demo.run_demo(lines=300, connections=3, timeout=WAIT, handler_class=handler)
    assert result.lines == 900
    assert result.engine == chatcore.implementation
    assert chatcore.implementation in result.summary()


def test_demo_reports_a_wrong_echo():
    class CorruptingHandler(demo.EchoHandler):
        def found_terminator(self) -> None:
            self._line_parts.append(b"!")
            demo.EchoHandler.found_terminator(self)

    with pytest.raises(demo.DemoError, match="expected"):
        demo.run_demo(lines=10, connections=2, timeout=WAIT, handler_class=CorruptingHandler)


def test_demo_reports_a_dropped_connection():
    class DroppingHandler(demo.EchoHandler):
        def found_terminator(self) -> None:
            self.close()

    with pytest.raises(demo.DemoError, match="closed by the server"):
        demo.run_demo(lines=10, connections=2, timeout=WAIT, handler_class=DroppingHandler)


def test_demo_times_out():
    class SilentHandler(demo.EchoHandler):
        def found_terminator(self) -> None:
            self._line_parts.clear()

    with pytest.raises(demo.DemoError, match="timed out"):
        demo.run_demo(lines=10, connections=1, timeout=0.3, handler_class=SilentHandler)


def test_cli_without_command_prints_help(capsys):
    assert cli_main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["demo", "--lines", "0"])
    assert exit_info.value.code == 2
    assert "--lines" in capsys.readouterr().err


@pytest.mark.timeout(180)  # past the child's own 120 s bound, which reports its output
def test_cli_demo_subprocess():
    completed = subprocess.run(
        [sys.executable, "-m", "chatcore", "demo", "--lines", "2000", "--connections", "4"],
        capture_output=True,
        timeout=120,
    )
    output = completed.stdout.decode()
    assert completed.returncode == 0, completed.stderr.decode()
    assert "8000 lines" in output
    assert "engine: %s" % chatcore.implementation in output


# The echo example over TLS ------------------------------------------------------


class TLSFiles(NamedTuple):
    """The files of a server certificate made for this run (``helpers.tls.PKI``), and clients that trust it."""

    cert: str
    key: str
    pki: Any  # helpers.tls.PKI
    host_name: str

    def argv(self, *more: str) -> list[str]:
        return ["--tls-cert", self.cert, "--tls-key", self.key, *more]

    def wrap(self, sock: socket.socket) -> ssl.SSLSocket:
        """*sock* as a TLS client that verifies the server, the handshake done."""
        return self.pki.client_context().wrap_socket(sock, server_hostname=self.host_name)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> TLSFiles:
    tls_helpers = pytest.importorskip("helpers.tls")  # needs trustme, of the test extra
    pki = tls_helpers.PKI()
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    chain = pki.server_certificate.cert_chain_pems
    chain[0].write_to_path(str(cert))
    for more in chain[1:]:
        more.write_to_path(str(cert), append=True)
    pki.server_certificate.private_key_pem.write_to_path(str(key))
    return TLSFiles(str(cert), str(key), pki, tls_helpers.HOST_NAME)


READY = b"220 ready for TLS\r\n"


def serve_echo_with(channel_map: dict[int, Any], base: type, *argv: str) -> demo.Listener:
    handler = echo_server.handler_for(echo_server.parse_arguments(list(argv)), base)
    return echo_server.start_echo_server(channel_map, handler_class=handler)


def echo_lines(sock: socket.socket, count: int) -> None:
    """Send *count* numbered lines on blocking *sock*; they must all come back, exact."""
    payload = b"".join(b"line %d\n" % number for number in range(count))
    sock.sendall(payload)
    assert receive_exactly(sock, len(payload)) == payload


def test_echo_serves_implicit_tls(channel_map, echo_handler, tls_files):
    server = serve_echo_with(channel_map, echo_handler, *tls_files.argv())

    def client() -> str:
        with tls_files.wrap(connect(server.address)) as sock:
            echo_lines(sock, 3000)
            return sock.version()

    assert serve_while(channel_map, client) == ["TLSv1.3"]


@pytest.mark.parametrize("end", [b"\r\n", b"\n"], ids=["crlf", "lf"])
def test_echo_starttls_upgrades_after_the_command_and_drops_what_followed_it_in_the_clear(
    channel_map, echo_handler, tls_files, end
):
    server = serve_echo_with(channel_map, echo_handler, *tls_files.argv("--starttls"))

    def client() -> tuple[bytes, bytes, bytes]:
        with connect(server.address) as raw:
            raw.sendall(b"in the clear" + end)
            clear = receive_exactly(raw, len(b"in the clear" + end))
            # Sent in one packet with the command: never to be echoed over TLS.
            raw.sendall(b"STARTTLS" + end + b"injected" + end)
            ready = receive_exactly(raw, len(READY))
            with tls_files.wrap(raw) as sock:
                sock.sendall(b"over TLS" + end)
                first = receive_exactly(sock, len(b"over TLS" + end))
                echo_lines(sock, 500)
                return clear, ready, first

    ((clear, ready, first),) = serve_while(channel_map, client)
    assert clear == b"in the clear" + end
    assert ready == READY
    assert first == b"over TLS" + end


def test_echo_starttls_after_tls_is_started_is_an_ordinary_line(channel_map, echo_handler, tls_files):
    server = serve_echo_with(channel_map, echo_handler, *tls_files.argv())

    def client() -> bytes:
        with tls_files.wrap(connect(server.address)) as sock:
            sock.sendall(b"STARTTLS\n")
            return receive_exactly(sock, 9)

    assert serve_while(channel_map, client) == [b"STARTTLS\n"]


@pytest.mark.parametrize(
    "argv, complaint",
    [
        (["--starttls"], "--starttls needs --tls-cert"),
        (["--tls-key", "key.pem"], "--tls-key needs --tls-cert"),
    ],
)
def test_echo_tls_options_that_cannot_work_are_refused(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        echo_server.parse_arguments(argv)
    assert exit_info.value.code == 2
    assert complaint in capsys.readouterr().err


def test_echo_without_tls_options_serves_in_the_clear():
    options = echo_server.parse_arguments([])
    assert (options.tls_cert, options.tls_key, options.starttls) == (None, None, False)
    handler = echo_server.handler_for(options)
    assert not issubclass(handler, (echo_server.ImplicitTLSEchoHandler, echo_server.StartTLSEchoHandler))


def test_echo_script_reports_a_certificate_it_cannot_load(tmp_path):
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo_server.py"), "--tls-cert", str(tmp_path / "missing.pem")],
        capture_output=True,
        timeout=WAIT,
    )
    assert completed.returncode == 1
    assert b"cannot load the TLS certificate and key" in completed.stderr
    assert b"Traceback" not in completed.stderr


@pytest.mark.parametrize("starttls", [False, True], ids=["implicit", "starttls"])
def test_echo_script_serves_tls_from_its_command_line(tls_files, starttls):
    extra = ["--starttls"] if starttls else []
    server = ScriptServer("echo_server.py", *tls_files.argv(*extra), "--max-seconds", str(WAIT))
    try:
        with connect(server.address) as raw:
            if starttls:
                raw.sendall(b"STARTTLS\r\n")
                assert receive_exactly(raw, len(READY)) == READY
            with tls_files.wrap(raw) as sock:
                echo_lines(sock, 200)
    finally:
        server.stop()
    assert "Traceback" not in server.output
