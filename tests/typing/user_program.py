"""A small line-protocol server and its client, written against chatcore as a user would.

tests/test_typing.py type-checks this directory (mypy --strict, pyright in
strict mode: see pyproject.toml) and runs it on each engine, so what is
checked is a working program: ``python tests/typing/user_program.py`` serves
one session of each kind over 127.0.0.1, checks every reply and exits 0.

The protocol, one command a line:

* ``ECHO text``: the text back;
* ``BLOB n`` then n raw bytes: "got n bytes" (a byte-count terminator);
* ``COUNT n``: n, n-1 … 1 on lines of their own, from a producer;
* ``FILE``: a canned text, through ``simple_producer``;
* ``SENDFILE``: the same text from a file on disk, through ``push_file``;
* ``QUIT``: "bye", then the server closes once everything is sent.

Commands end in CRLF or a bare LF (a tuple terminator); the session is served
on ``chatcore.loop`` and again through ``chatcore.aio`` on asyncio's loop.
"""

import asyncio
import socket
import sys
import tempfile
import time
from typing import IO, Any, Callable, Optional

import chatcore
import chatcore.aio
import chatcore.compat
from chatcore.compat import asynchat, asyncore

ChannelMap = dict[int, chatcore.dispatcher]
HandlerFactory = Callable[[socket.socket, ChannelMap], chatcore.async_chat]

CRLF = b"\r\n"
CANNED_FILE = b"line one\r\nline two\r\nline three\r\n"
BLOB = b"\x00\x01binary\r\n\xff"
COMMANDS = [b"ECHO hello", b"BLOB %d" % len(BLOB), BLOB, b"COUNT 3", b"FILE", b"SENDFILE", b"ECHO done", b"QUIT"]
EXPECTED_REPLIES = [
    b"hello",
    b"got %d bytes" % len(BLOB),
    b"3",
    b"2",
    b"1",
    *CANNED_FILE.split(CRLF)[:-1],
    *CANNED_FILE.split(CRLF)[:-1],
    b"done",
    b"bye",
]
LINE_ENDS = (CRLF, b"\n")


def canned_file() -> IO[bytes]:
    """A temporary file holding CANNED_FILE, at its start (deleted once closed)."""
    file = tempfile.TemporaryFile()
    file.write(CANNED_FILE)
    file.flush()
    return file


class CountdownProducer:
    """Yields "n", "n-1" … "1", one line a call to ``more()``."""

    def __init__(self, start: int) -> None:
        self.next_number = start

    def more(self) -> bytes:
        if self.next_number <= 0:
            return b""
        self.next_number -= 1
        return b"%d\r\n" % (self.next_number + 1)


class CommandHandler(chatcore.async_chat):
    """The server side of one connection: collect a line, act on it."""

    def __init__(self, sock: socket.socket, channel_map: ChannelMap) -> None:
        super().__init__(sock, map=channel_map)
        self.parts: list[bytes] = []
        self.set_terminator(LINE_ENDS)

    def collect_incoming_data(self, data: bytes) -> None:
        self.parts.append(data)

    def found_terminator(self) -> None:
        received = b"".join(self.parts)
        self.parts = []
        ended_by: Optional[bytes] = self.matched_terminator
        if ended_by is None:
            # The raw bytes a BLOB command announced: back to lines.
            self.set_terminator(LINE_ENDS)
            self.push(b"got %d bytes\r\n" % len(received))
            return
        command, _, argument = received.partition(b" ")
        if command == b"ECHO":
            self.push(memoryview(argument + CRLF))
        elif command == b"BLOB":
            self.set_terminator(int(argument))
        elif command == b"COUNT":
            self.push_with_producer(CountdownProducer(int(argument)))
        elif command == b"FILE":
            self.push_with_producer(chatcore.simple_producer(CANNED_FILE, buffer_size=8))
        elif command == b"SENDFILE":
            self.push_file(canned_file(), 0, None, close=True)
        elif command == b"QUIT":
            self.push(bytearray(b"bye\r\n"))
            self.close_when_done()
        else:
            self.push(b"unknown command\r\n")


class LineServer(chatcore.dispatcher):
    """Listens on 127.0.0.1 and gives each connection to *handler_factory*."""

    def __init__(self, handler_factory: HandlerFactory, channel_map: ChannelMap) -> None:
        super().__init__(map=channel_map)
        self.handler_factory = handler_factory
        self.channel_map = channel_map
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind(("127.0.0.1", 0))
        self.listen(5)

    @property
    def port(self) -> int:
        port: int = self.socket.getsockname()[1]
        return port

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        self.handler_factory(sock, self.channel_map)


class CommandClient(chatcore.message_chat):
    """Sends the commands once connected and keeps every reply line."""

    # One reply line is short: anything longer is a broken server.
    max_message_size = 4096

    def __init__(self, port: int, channel_map: ChannelMap) -> None:
        super().__init__(map=channel_map)
        self.replies: list[bytes] = []
        self.overflowed = False
        self.set_terminator(CRLF)
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.connect(("127.0.0.1", port))

    def handle_connect(self) -> None:
        for command in COMMANDS:
            # Lines end in CRLF, but for one in a bare LF, as some peers send.
            line_end = b"\n" if command == b"ECHO done" else CRLF
            self.push(command if command is BLOB else command + line_end)

    def handle_message(self, message: bytes) -> None:
        self.replies.append(message)

    def handle_message_overflow(self) -> None:
        self.overflowed = True
        self.close()


def run_for_a_while(
    loop: Callable[..., None], channel_map: ChannelMap, done: Callable[[], bool], seconds: float = 10.0
) -> None:
    """Turn *loop* over *channel_map* until *done()*, for *seconds* at the most."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        loop(timeout=0.05, map=channel_map, count=1)


def run_session() -> list[bytes]:
    """One client session against the server; returns the reply lines."""
    channel_map: ChannelMap = {}
    server = LineServer(CommandHandler, channel_map)
    client = CommandClient(server.port, channel_map)
    # A deadline on the loop, and a call handed over as a worker thread would.
    give_up: chatcore.TimerHandle = chatcore.call_later(10.0, chatcore.close_all, channel_map, map=channel_map)
    handed: list[str] = []
    chatcore.call_soon_threadsafe(handed.append, "started", map=channel_map)
    try:
        # Done when the server has closed the client's connection after "bye".
        run_for_a_while(chatcore.loop, channel_map, lambda: not client.connected and bool(client.replies))
    finally:
        give_up.cancel()
        chatcore.close_all(channel_map)
    return client.replies


async def serve_until(channel_map: ChannelMap, done: Callable[[], bool], seconds: float = 10.0) -> None:
    """Serve *channel_map* through chatcore.aio beside an asyncio task that empties it once *done()*."""

    async def close_when_done() -> None:
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        chatcore.close_all(channel_map)

    watcher = asyncio.ensure_future(close_when_done())
    await chatcore.aio.loop(channel_map)  # returns once the map is empty
    await watcher


def run_asyncio_session() -> list[bytes]:
    """The same session, served on asyncio's loop."""
    channel_map: ChannelMap = {}
    server = LineServer(CommandHandler, channel_map)
    client = CommandClient(server.port, channel_map)
    try:
        asyncio.run(serve_until(channel_map, lambda: not client.connected and bool(client.replies)))
    finally:
        chatcore.close_all(channel_map)
    return client.replies


def serve_from_every_core() -> list[int]:
    """The server from one worker process per core (not called here: it forks)."""
    channel_map: ChannelMap = {}
    LineServer(CommandHandler, channel_map)
    statuses: list[int] = chatcore.prefork(map=channel_map)
    chatcore.close_all(channel_map)
    return statuses


class LegacyUpperHandler(asynchat.async_chat):
    """Legacy style, on the compat module: str terminators, encoding on."""

    use_encoding = 1
    ac_max_message_size = None

    def __init__(self, sock: socket.socket, channel_map: ChannelMap) -> None:
        asynchat.async_chat.__init__(self, sock, channel_map)
        self.buffer = b""
        self.set_terminator("\n")

    def collect_incoming_data(self, data: bytes) -> None:
        self.buffer += data

    def found_terminator(self) -> None:
        self.push(self.buffer.upper() + b"\n")
        self.buffer = b""


class LegacyClient(asyncore.dispatcher_with_send):
    """A legacy client: buffered sends, raw reads."""

    def __init__(self, port: int, channel_map: ChannelMap) -> None:
        asyncore.dispatcher_with_send.__init__(self, map=channel_map)
        self.received = b""
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.connect(("127.0.0.1", port))
        self.send(b"ping\n")

    def handle_read(self) -> None:
        self.received += self.recv(1024)
        if self.received.endswith(b"\n"):
            self.close()


def run_legacy_session() -> bytes:
    """One exchange with a server built from ``chatcore.compat``; returns the reply."""
    channel_map: ChannelMap = {}
    server = LineServer(LegacyUpperHandler, channel_map)
    client = LegacyClient(server.port, channel_map)
    try:
        run_for_a_while(asyncore.loop, channel_map, lambda: not (client.connected or client.connecting))
    finally:
        asyncore.close_all(channel_map)
    return client.received


def enable_legacy_imports() -> None:
    """What a legacy program's entry point does first (not called here: it changes sys.modules)."""
    chatcore.compat.install(coalesce_sends=False)


def main() -> int:
    """Run both sessions; 0 if every reply was the one expected."""
    print("engine:", chatcore.implementation)
    replies = run_session()
    asyncio_replies = run_asyncio_session()
    legacy_reply = run_legacy_session()
    if replies != EXPECTED_REPLIES or asyncio_replies != EXPECTED_REPLIES or legacy_reply != b"PING\n":
        print("unexpected replies: %r, %r and %r" % (replies, asyncio_replies, legacy_reply))
        return 1
    print("%d replies and the legacy one, as expected" % len(replies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
