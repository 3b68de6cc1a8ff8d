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
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, NamedTuple

import pytest
from helpers.serving import serve_until
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


def test_file_producer_reads_in_chunks_and_closes_at_eof(tmp_path):
    path = tmp_path / "data"
    path.write_bytes(b"0123456789" * 10)
    producer = http_static.FileProducer(open(str(path), "rb"), 100, chunk_size=32)
    try:
        chunks = []
        while True:
            chunk = producer.more()
            if not chunk:
                break
            assert len(chunk) <= 32
            chunks.append(chunk)
        assert b"".join(chunks) == b"0123456789" * 10
        assert producer.closed
        assert producer.more() == b""
    finally:
        producer.close()


def test_file_producer_stops_at_announced_size(tmp_path):
    path = tmp_path / "grown"
    path.write_bytes(b"a" * 50)
    producer = http_static.FileProducer(open(str(path), "rb"), 20, chunk_size=8)
    try:
        data = b""
        while True:
            chunk = producer.more()
            if not chunk:
                break
            data += chunk
        assert data == b"a" * 20
        assert producer.closed
    finally:
        producer.close()


def test_http_client_leaving_mid_transfer_closes_the_file(channel_map, site, http_handler):
    producers: list[Any] = []

    class RecordingProducer(http_static.FileProducer):
        def __init__(self, *args: Any, **kwargs: Any):
            http_static.FileProducer.__init__(self, *args, **kwargs)
            producers.append(self)

    class SmallBufferHandler(http_handler):
        producer_class = RecordingProducer

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
    assert len(producers) == 1
    assert producers[0].remaining > 0, "the whole file was sent; the test proves nothing"
    assert producers[0].closed


def test_resolve_path_refuses_outside_root(site):
    root = os.path.realpath(str(site.root))
    assert http_static.resolve_path(root, "/hello.txt") == os.path.join(root, "hello.txt")
    assert http_static.resolve_path(root, "/../secret.txt") is None
    assert http_static.resolve_path(root, "//" + site.secret.as_posix()) is None
    assert http_static.resolve_path(root, "/empty") is None
    if site.symlinks:
        assert http_static.resolve_path(root, "/leak.txt") is None
        assert http_static.resolve_path(root, "/linked") is None


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
