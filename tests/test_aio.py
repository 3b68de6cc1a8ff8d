"""chatcore.aio.loop(): chatcore's channels served on a running asyncio loop, beside asyncio code.

Every test runs on both engines and on two event loops, asyncio's own and
uvloop's (skipped where uvloop is not installed), over 127.0.0.1.  Each
asyncio program is bounded by ``WAIT``; the channels and servers it made are
closed before it returns.  Then CPython's asynchat and asyncore suites, and
the example servers, are served through it.
"""

import asyncio
import errno
import os
import re
import selectors
import socket
import subprocess
import sys
import threading

import pytest
from helpers.cpython import engine_available, engine_env, find_cpython_test
from helpers.fakes import ScriptedListener, err
from helpers.processes import run_python
from helpers.serving import release

import chatcore
from chatcore import aio, demo, dispatch, eventloop

#: The bound on one test's asyncio program, in seconds; only a failure reaches it.
WAIT = 20.0

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _uvloop_factory():
    uvloop = pytest.importorskip("uvloop")
    return uvloop.new_event_loop


@pytest.fixture(params=["asyncio", "uvloop"])
def event_loop_kind(request):
    """The kind of asyncio event loop the test's program runs on."""
    if request.param == "uvloop":
        _uvloop_factory()
    return request.param


def run(kind, program):
    """Run the coroutine function *program* on a new event loop of *kind*, within WAIT seconds."""
    new_event_loop = _uvloop_factory() if kind == "uvloop" else asyncio.new_event_loop
    event_loop = new_event_loop()
    try:
        return event_loop.run_until_complete(asyncio.wait_for(program(), WAIT))
    finally:
        event_loop.close()


@pytest.fixture
def channel_map():
    served = {}
    yield served
    release(served)


def line_server(chat_class, channel_map, answer=None, **class_attributes):
    """A listener whose connections are *chat_class* channels answering each line with ``answer(line)``.

    By default a line comes back as it came.  Returns (listener, the
    channels made so far).
    """
    channels = []
    reply = answer or (lambda line: line + b"\n")

    class Lines(chat_class):
        def __init__(self, sock):
            super().__init__(sock, map=channel_map)
            self.set_terminator(b"\n")
            self.parts = []
            channels.append(self)

        def collect_incoming_data(self, data):
            self.parts.append(data)

        def found_terminator(self):
            line = b"".join(self.parts)
            self.parts = []
            self.push(reply(line))

    for name, value in class_attributes.items():
        setattr(Lines, name, value)

    return listening(channel_map, Lines), channels


def listening(channel_map, channel_class):
    """A listener on 127.0.0.1 in *channel_map* whose connections become ``channel_class(sock)``."""

    class Listener(chatcore.dispatcher):
        def handle_accepted(self, sock, addr):
            channel_class(sock)

    listener = Listener(map=channel_map)
    listener.create_socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    return listener


def address_of(listener):
    return listener.socket.getsockname()


async def echoed_lines(address, lines, **connection_options):
    """Send *lines* pipelined over one asyncio connection; what comes back, line by line."""
    reader, writer = await asyncio.open_connection(*address, **connection_options)
    try:
        writer.write(b"".join(line + b"\n" for line in lines))
        return [(await reader.readline()).rstrip(b"\n") for _ in lines]
    finally:
        writer.close()
        await writer.wait_closed()


async def until(condition, what):
    """Let the event loop run until *condition()* is true; fails after a bounded number of short sleeps."""
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("%s did not happen" % what)


def test_async_chat_serves_and_connects_beside_asyncio_code(chat_class, channel_map, event_loop_kind):
    listener, _ = line_server(chat_class, channel_map)
    lines = [b"line %d" % i for i in range(200)]

    class Client(chat_class):
        """A chatcore client of an asyncio server, in the same loop."""

        def __init__(self, address, done):
            super().__init__(map=channel_map)
            self.set_terminator(b"\n")
            self.parts, self.replies, self.done = [], [], done
            self.create_socket()
            self.connect(address)
            for line in lines:
                self.push(line.upper() + b"\n")

        def collect_incoming_data(self, data):
            self.parts.append(data)

        def found_terminator(self):
            self.replies.append(b"".join(self.parts))
            self.parts = []
            if len(self.replies) == len(lines):
                self.done.set_result(None)
                self.close()

    async def asyncio_echo(reader, writer):
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line.lower())
        writer.close()

    async def program():
        server = await asyncio.start_server(asyncio_echo, "127.0.0.1", 0)
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        done = asyncio.get_running_loop().create_future()
        client = Client(server.sockets[0].getsockname(), done)
        # An asyncio client of the chatcore server while the chatcore client talks to asyncio.
        assert await echoed_lines(address_of(listener), lines) == lines
        await done
        listener.close()
        await serving  # the map is empty
        server.close()
        await server.wait_closed()
        return client.replies

    assert run(event_loop_kind, program) == lines
    assert channel_map == {}


def test_poll_semantics_serve_too(chat_class, channel_map, event_loop_kind):
    listener, _ = line_server(chat_class, channel_map)

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, use_poll=True, timeout=1.0))
        replies = await echoed_lines(address_of(listener), [b"a", b"bb", b"ccc"])
        listener.close()
        await serving
        return replies

    assert run(event_loop_kind, program) == [b"a", b"bb", b"ccc"]


def test_a_channel_with_its_own_readable_is_asked_every_turn(channel_map, event_loop_kind, sockets):
    # Its answer changes without telling chatcore: the next turn, at most
    # *timeout* later, asks it again, as chatcore.loop() does.
    near, far = sockets.pair()

    class Gated(chatcore.dispatcher):
        open_gate = False
        received = b""

        def readable(self):
            return self.open_gate

        def writable(self):
            return False

        def handle_read(self):
            self.received += self.recv(100)

    channel = Gated(near, map=channel_map)
    far.send(b"waiting")

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=0.02))
        await asyncio.sleep(0.05)
        assert channel.received == b""
        channel.open_gate = True
        await until(lambda: channel.received, "the read once readable() said yes")
        channel.close()
        await serving

    run(event_loop_kind, program)
    assert channel.received == b"waiting"


def test_timers_and_handoffs_run_in_order_and_wake_the_wait(chat_class, channel_map, event_loop_kind):
    listener, _ = line_server(chat_class, channel_map)
    ran = []

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        await asyncio.sleep(0)
        # Added while asyncio waits: each one shortens the wait.
        chatcore.call_later(0.06, ran.append, "third", map=channel_map)
        chatcore.call_later(0.02, ran.append, "first", map=channel_map)
        chatcore.call_later(0.04, ran.append, "second", map=channel_map)
        chatcore.call_later(0.03, ran.append, "cancelled", map=channel_map).cancel()
        handed = threading.Event()

        def hand_over():
            chatcore.call_soon_threadsafe(ran.append, "from a thread", map=channel_map)
            handed.set()

        await until(lambda: len(ran) == 3, "the timers")
        thread = threading.Thread(target=hand_over)
        thread.start()
        await until(lambda: len(ran) == 4, "the handoff")
        thread.join()
        listener.close()
        await serving

    run(event_loop_kind, program)
    assert ran == ["first", "second", "third", "from a thread"]


def test_an_idle_connection_is_closed_by_its_timeout(chat_class, channel_map, event_loop_kind):
    timed_out = []

    def record(channel):
        timed_out.append(channel)
        chat_class.handle_idle_timeout(channel)

    listener, _ = line_server(chat_class, channel_map, ac_idle_timeout=0.1, handle_idle_timeout=record)

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        reader, writer = await asyncio.open_connection(*address_of(listener))
        writer.write(b"hello\n")
        assert await reader.readline() == b"hello\n"
        assert await reader.read() == b""  # closed for idleness
        writer.close()
        await writer.wait_closed()
        listener.close()
        await serving

    run(event_loop_kind, program)
    assert len(timed_out) == 1


def test_output_backpressure_pauses_reading_until_the_peer_reads(chat_class, channel_map, event_loop_kind):
    reply = b"r" * 65536
    listener, channels = line_server(chat_class, channel_map, lambda line: reply, ac_max_output_buffer=262144)
    requests = 100

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        reader, writer = await asyncio.open_connection(*address_of(listener))
        writer.transport.pause_reading()
        writer.write(b"x\n" * requests)
        await until(lambda: channels and channels[0]._read_pauses & dispatch.PAUSED_BY_OUTPUT, "the output pause")
        writer.transport.resume_reading()
        received = await reader.readexactly(len(reply) * requests)
        assert not channels[0]._read_pauses
        writer.close()
        await writer.wait_closed()
        listener.close()
        await until(lambda: len(channel_map) == 0, "the channel's close")
        await serving
        return received

    assert run(event_loop_kind, program) == reply * requests


def test_tls_echo(chat_class, channel_map, event_loop_kind):
    from helpers.tls import HOST_NAME, PKI

    pki = PKI()

    class TLSLines(chat_class):
        def __init__(self, sock, map=None):
            super().__init__(sock, map=channel_map)
            self.start_tls(pki.server_context(), server_side=True)

    listener, _ = line_server(TLSLines, channel_map)
    lines = [b"secret %d" % i for i in range(50)]

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        replies = await echoed_lines(address_of(listener), lines, ssl=pki.client_context(), server_hostname=HOST_NAME)
        listener.close()
        await until(lambda: len(channel_map) == 0, "the TLS channel's close")
        await serving
        return replies

    assert run(event_loop_kind, program) == lines


def test_a_file_pushed_with_push_file_arrives_whole(chat_class, channel_map, event_loop_kind, tmp_path):
    payload = os.urandom(3 << 20)
    path = tmp_path / "payload"
    path.write_bytes(payload)

    class FileSender(chat_class):
        def __init__(self, sock):
            super().__init__(sock, map=channel_map)
            self.set_terminator(b"\n")

        def collect_incoming_data(self, data):
            pass

        def found_terminator(self):
            self.push(b"file:")
            self.push_file(open(path, "rb"), close=True)
            self.push(b":end")
            self.close_when_done()

    listener = listening(channel_map, FileSender)

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        reader, writer = await asyncio.open_connection(*address_of(listener))
        try:
            writer.write(b"GET\n")
            received = await reader.read()  # to the end of data: close_when_done
        finally:
            writer.close()
            await writer.wait_closed()
        listener.close()
        await until(lambda: len(channel_map) == 0, "the channels' close")
        await serving
        return received

    assert run(event_loop_kind, program) == b"file:" + payload + b":end"


def test_many_connections_accepted_and_an_accept_backoff_resumed(chat_class, channel_map, event_loop_kind):
    listener, channels = line_server(chat_class, channel_map)
    # Out of descriptors once: the listener pauses, and a chatcore timer resumes it.
    scripted = ScriptedListener(listener.socket, [err(errno.EMFILE)])
    dispatch._ACCEPT_BACKOFF.reset()

    async def program():
        listener.socket = scripted
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        replies = await asyncio.gather(*(echoed_lines(scripted.getsockname(), [b"%d" % n]) for n in range(20)))
        listener.close()
        await until(lambda: len(channel_map) == 0, "the channels' close")
        await serving
        return replies

    assert run(event_loop_kind, program) == [[b"%d" % n] for n in range(20)]
    assert scripted.accepts >= 21 and len(channels) == 20


def test_asyncio_code_pushing_and_closing_wakes_the_wait(chat_class, channel_map, event_loop_kind, sockets):
    near, far = sockets.pair()
    channel = chat_class(near, map=channel_map)
    # More than the socket takes at once: the rest waits for the loop's write events.
    payload = os.urandom(4 * 1024 * 1024)

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        await asyncio.sleep(0.01)  # asyncio waits for the poller now
        channel.push(payload)
        reader, writer = await asyncio.open_connection(sock=far)
        received = await reader.readexactly(len(payload))
        channel.close()  # the map is empty: the loop returns
        await serving
        writer.close()
        await writer.wait_closed()
        return received

    assert run(event_loop_kind, program) == payload


def test_a_handler_error_reaches_handle_error_and_exit_now_leaves(chat_class, channel_map, event_loop_kind, sockets):
    errors = []

    class Failing(chat_class):
        def collect_incoming_data(self, data):
            if data.startswith(b"exit"):
                raise chatcore.ExitNow("asked to")
            raise ValueError(data)

        def handle_error(self):
            errors.append(sys.exc_info()[1])

    near, far = sockets.pair()
    Failing(near, map=channel_map).set_terminator(b"\n")

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        far.send(b"boom")
        await until(lambda: errors, "handle_error")
        far.send(b"exit")
        with pytest.raises(chatcore.ExitNow):
            await serving

    run(event_loop_kind, program)
    assert [type(error) for error in errors] == [ValueError]
    assert len(channel_map) == 1  # left in the map, as chatcore.loop() leaves it


def test_cancelling_leaves_the_channels_for_another_loop(chat_class, channel_map, event_loop_kind):
    listener, _ = line_server(chat_class, channel_map)

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map))
        await asyncio.sleep(0.01)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving

    run(event_loop_kind, program)
    assert list(channel_map.values()) == [listener] and listener.socket.fileno() >= 0
    # The poller was given back: chatcore.loop() serves the map again.
    chatcore.loop(timeout=0, map=channel_map, count=1)


def test_count_limits_the_turns_and_an_empty_map_returns_at_once(chat_class, channel_map, event_loop_kind):
    line_server(chat_class, channel_map)

    async def program():
        await aio.loop({})
        await aio.loop(channel_map, timeout=0.001, count=3)

    run(event_loop_kind, program)
    assert len(channel_map) == 1


def test_one_loop_serves_a_map_at_a_time(chat_class, channel_map, event_loop_kind):
    line_server(chat_class, channel_map)
    refused = []

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map))
        await asyncio.sleep(0.01)
        with pytest.raises(RuntimeError, match="one loop at a time"):
            await aio.loop(channel_map)
        with pytest.raises(RuntimeError, match=r"served by chatcore\.aio\.loop"):
            chatcore.loop(timeout=0, map=channel_map, count=1)
        with pytest.raises(RuntimeError, match=r"served by chatcore\.aio\.loop"):
            chatcore.poll(0, channel_map)
        serving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await serving

    run(event_loop_kind, program)

    def serve_through_aio_from_a_timer():
        try:
            run(event_loop_kind, lambda: aio.loop(channel_map))
        except RuntimeError as error:
            refused.append(str(error))

    chatcore.call_later(0, serve_through_aio_from_a_timer, map=channel_map)
    chatcore.loop(timeout=0, map=channel_map, count=2)
    assert len(refused) == 1 and "already served by another loop" in refused[0]


def test_a_poller_without_a_descriptor_or_a_loop_without_add_reader_is_refused(chat_class, channel_map, monkeypatch):
    line_server(chat_class, channel_map)

    class ProactorLike(asyncio.SelectorEventLoop):
        def add_reader(self, fd, callback, *args):
            raise NotImplementedError

    event_loop = ProactorLike()
    try:
        with pytest.raises(RuntimeError, match="add_reader"):
            event_loop.run_until_complete(aio.loop(channel_map))
    finally:
        event_loop.close()
    release_and_refill = dict(channel_map)
    release(channel_map)  # a fresh poller for the map, of the kind below
    channel_map.update(release_and_refill)

    def select_poller():
        poller = eventloop._SelectorsPoller()
        poller._selector.close()
        poller._selector = selectors.SelectSelector()
        return poller

    monkeypatch.setattr(eventloop, "new_poller", select_poller)
    with pytest.raises(RuntimeError, match="descriptor of its own"):
        run("asyncio", lambda: aio.loop(channel_map))


def test_import_chatcore_does_not_import_asyncio():
    result = run_python(
        """
        import sys
        import chatcore, chatcore.compat.asynchat, chatcore.compat.asyncore
        assert "asyncio" not in sys.modules, "asyncio imported"
        import chatcore.aio
        assert "asyncio" in sys.modules
        print("ok")
        """
    )
    assert result.stdout.strip() == "ok", result.stdout


# CPython's suites and the examples, served through chatcore.aio -------------------

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpython_suite.py")


# Each suite once per engine, the compiled one on asyncio's loop, the twin on
# uvloop's where it is installed: every pairing costs a child of a few seconds.
@pytest.mark.parametrize("suite", ["test_asynchat.py", "test_asyncore.py"])
@pytest.mark.parametrize("engine_id", ["c", "py"])
def test_cpython_suite_through_aio(suite, engine_id, tmp_path):
    path = find_cpython_test(suite, ["3.11"])
    if path is None:
        pytest.skip("CPython 3.11's %s not found" % suite)
    if not engine_available(engine_id):
        pytest.skip("compiled engine not built (CHATCORE_NO_EXTENSIONS=1 build)")
    kind = "asyncio"
    if engine_id == "py":
        try:
            import uvloop  # noqa: F401
        except ImportError:
            pass
        else:
            kind = "uvloop"
    proc = subprocess.run(
        [sys.executable, RUNNER, path, kind],
        cwd=str(tmp_path),
        env=engine_env(engine_id),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=300,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-6000:]
    served = int(proc.stdout.rsplit("chatcore.aio.loop() calls:", 1)[1])
    assert served > 20, proc.stdout[-2000:]


def _load_example(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location("chatcore_aio_example_" + name, os.path.join(EXAMPLES, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_example_servers_in_process_beside_asyncio_clients(engine, channel_map, event_loop_kind, tmp_path):
    http_static = _load_example("http_static")
    (tmp_path / "hello.txt").write_bytes(b"Hello, chatcore!\n")
    echo_handler = type("EchoHandler", (demo.EchoHandler,), {"_engine": engine})
    http_handler = type("HTTPRequestHandler", (http_static.HTTPRequestHandler,), {"_engine": engine})
    echo = demo.start_echo_server(channel_map, handler_class=echo_handler)
    http = http_static.start_http_server(str(tmp_path), channel_map, handler_class=http_handler)

    async def get(path):
        reader, writer = await asyncio.open_connection(*http.address)
        writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        response = await reader.read()
        writer.close()
        await writer.wait_closed()
        return response

    async def program():
        serving = asyncio.ensure_future(aio.loop(channel_map, timeout=None))
        lines = [b"echo %d" % i for i in range(100)]
        echoed, response = await asyncio.gather(echoed_lines(echo.address, lines), get(b"/hello.txt"))
        echo.close()
        http.close()
        await until(lambda: len(channel_map) == 0, "the channels' close")
        await serving
        return echoed == lines, response

    same, response = run(event_loop_kind, program)
    assert same
    assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(b"\r\n\r\nHello, chatcore!\n")


@pytest.mark.parametrize("script", ["echo_server.py", "http_static.py"])
def test_the_example_scripts_take_an_event_loop_option(script, event_loop_kind, tmp_path):
    (tmp_path / "hello.txt").write_bytes(b"hi\n")
    extra = ["--max-seconds", str(WAIT)] if script == "echo_server.py" else ["--root", str(tmp_path)]
    process = subprocess.Popen(
        [sys.executable, os.path.join(EXAMPLES, script), "--port", "0", "--event-loop", event_loop_kind, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        first = process.stdout.readline().decode()
        port = int(re.search(r":([0-9]+)\b", first).group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            sock.sendall(b"ping\n" if script == "echo_server.py" else b"GET /hello.txt HTTP/1.0\r\n\r\n")
            received = b""
            while not received.endswith(b"ping\n" if script == "echo_server.py" else b"hi\n"):
                chunk = sock.recv(4096)
                assert chunk, received
                received += chunk
    finally:
        process.terminate()
        output = process.communicate(timeout=WAIT)[0].decode()
    assert "Traceback" not in output, output
