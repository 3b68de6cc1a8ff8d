"""Loopback file-serving benchmark: ``push_file`` (sendfile) against a read-and-push producer and asyncio.

One connection asks for a file by its path and reads it to the end, as fast
as it can; the file (random bytes, made in a temporary directory and deleted
afterwards) is in the page cache, so what is measured is the server's way of
getting it into the socket.  Each server runs in its own process:

* ``chatcore-sendfile``: ``async_chat.push_file(file, close=True)``, sent
  with ``os.sendfile`` (zero-copy);
* ``chatcore-read``: the same channel pushing a producer whose ``more()``
  reads 64 KiB of the file (what an asynchat program does, pyftpdlib's
  buffer size), each chunk copied through Python;
* ``asyncio``: ``await loop.sendfile(transport, file)`` on asyncio's default
  loop (zero-copy on Linux);
* ``uvloop``: uvloop's loop, when it is installed; it has no
  ``loop.sendfile`` (NotImplementedError), so the file is read and written
  in 256 KiB pieces with ``drain()`` between, as asyncio's own fallback does.

A row's figure is GB/s (the best of a few transfers); the ratio is to
asyncio's, measured in the same run; the notes give the server's CPU seconds
per GiB sent (the server reports its ``time.process_time()``).  The client
checks each transfer's length and its first and last bytes.  The server side
is a command, as for the echo benchmark::

    python -m chatcore.benchmark.files serve --server chatcore-sendfile --port-file PATH
"""

import importlib.util
import os
import socket
import sys
import tempfile
import time
from typing import Any, Callable, NamedTuple, Optional

import chatcore

from .echo import _listener_class
from .serverproc import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_TIMEOUT,
    LOOPBACK,
    ServerProcess,
    VerificationError,
    connect,
    serve_main,
    start_lifeline,
    write_port_file,
)

__all__ = [
    "SERVERS",
    "FileClient",
    "FileServerProcess",
    "FileTransfer",
    "available_servers",
    "main",
    "make_file",
    "run_files",
    "serve",
]

SERVERS = ("chatcore-sendfile", "chatcore-read", "asyncio", "uvloop")
#: What the read-and-push producer reads per ``more()``.
READ_CHUNK = 65536
#: How much of each end of a transfer the client compares with the file.
_CHECKED = 1 << 16
_RECEIVE_SIZE = 1 << 20
#: What asyncio's sendfile fallback reads per write (and the uvloop row).
_FALLBACK_CHUNK = 256 << 10
#: The request asking for the server's CPU time so far.
_CPU_REQUEST = b"\x00cpu"


def available_servers() -> list[str]:
    """The servers this Python can run: uvloop's only when it is installed."""
    return [server for server in SERVERS if server != "uvloop" or importlib.util.find_spec("uvloop") is not None]


# --- The servers (they run in the ``serve`` subprocess) ----------------------


class _ReadProducer:
    """The classic asynchat file producer: ``more()`` reads the next chunk, closing at the end."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def more(self) -> bytes:
        data: bytes = self.file.read(READ_CHUNK)
        if not data:
            self.file.close()
        return data


def _serve_chatcore(server: str, announce: Callable[[int, str], None]) -> None:
    zero_copy = server == "chatcore-sendfile"

    class FileHandler(chatcore.async_chat):
        def __init__(self, sock: Optional[socket.socket] = None, map: Optional[dict[int, Any]] = None):
            chatcore.async_chat.__init__(self, sock, map)
            self.set_terminator(b"\n")
            self.request = bytearray()

        def collect_incoming_data(self, data: bytes) -> None:
            self.request += data

        def found_terminator(self) -> None:
            request, self.request = bytes(self.request), bytearray()
            if request == _CPU_REQUEST:
                self.push(b"%r\n" % time.process_time())
                return
            file = open(request, "rb")  # closed by the channel once sent
            if zero_copy:
                self.push_file(file, close=True)
            else:
                self.push_with_producer(_ReadProducer(file))

    channel_map: dict[int, Any] = {}
    listener = _listener_class(chatcore.dispatcher)(FileHandler, channel_map)
    how = "push_file (os.sendfile)" if zero_copy else "push_with_producer, %d KiB reads" % (READ_CHUNK >> 10)
    detail = "chatcore %s (%s engine), %s, Python %s" % (
        chatcore.__version__,
        chatcore.implementation,
        how,
        sys.version.split()[0],
    )
    announce(listener.socket.getsockname()[1], detail)
    chatcore.loop(timeout=1.0, map=channel_map)


def _serve_asyncio(server: str, announce: Callable[[int, str], None]) -> None:
    import asyncio

    if server == "uvloop":
        import uvloop

        event_loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        detail = "uvloop %s, %d KiB reads and writes (uvloop has no loop.sendfile), Python %s" % (
            getattr(uvloop, "__version__", "?"),
            _FALLBACK_CHUNK >> 10,
            sys.version.split()[0],
        )
        zero_copy = False
    else:
        event_loop = asyncio.new_event_loop()
        detail = "asyncio %s, loop.sendfile, Python %s" % (type(event_loop).__name__, sys.version.split()[0])
        zero_copy = True

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = (await reader.readline()).rstrip(b"\n")
                if not request:
                    break
                if request == _CPU_REQUEST:
                    writer.write(b"%r\n" % time.process_time())
                    continue
                with open(request, "rb") as file:
                    if zero_copy:
                        await event_loop.sendfile(writer.transport, file)
                    else:
                        # asyncio's own fallback, as a program writes it.
                        while True:
                            chunk = file.read(_FALLBACK_CHUNK)
                            if not chunk:
                                break
                            writer.write(chunk)
                            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def serve_forever() -> None:
        listening = await asyncio.start_server(handle, LOOPBACK, 0)
        announce(listening.sockets[0].getsockname()[1], detail)
        await event_loop.create_future()  # forever: the lifeline ends the process

    try:
        event_loop.run_until_complete(serve_forever())
    finally:
        event_loop.close()


def serve(server: str, port_file: str, max_seconds: float = DEFAULT_MAX_SECONDS, watch_stdin: bool = True) -> None:
    """Run file server *server* until the process is ended; see the module docstring."""
    start_lifeline(max_seconds, watch_stdin, "file server")

    def announce(port: int, detail: str) -> None:
        write_port_file(port_file, port, server, detail, serves_chatcore=server.startswith("chatcore"))

    if server.startswith("chatcore"):
        _serve_chatcore(server, announce)
    else:
        _serve_asyncio(server, announce)


# --- The client and the files, in the benchmark's process -------------------


class FileServerProcess(ServerProcess):
    """A file server in a child process (``serve`` above)."""

    module = "chatcore.benchmark.files"
    label = "file server"
    servers = SERVERS
    available_servers = staticmethod(available_servers)


class FileTransfer(NamedTuple):
    """The best of a server's transfers of one file."""

    server: str
    size: int
    seconds: float
    #: Server CPU seconds (user + system) during that transfer.
    cpu_seconds: float
    detail: str

    @property
    def gb_per_s(self) -> float:
        return self.size / self.seconds / 1e9 if self.seconds else 0.0


def make_file(directory: str, size: int) -> str:
    """A file of *size* bytes (a random MiB over and over) in *directory*; its path."""
    path = os.path.join(directory, "served.bin")
    block = os.urandom(1 << 20)
    with open(path, "wb") as file:
        for _ in range(size // len(block)):
            file.write(block)
        file.write(block[: size % len(block)])
    return path


class FileClient:
    """A connection to a file server (``FileServerProcess``) that asks for the file at *path*, of *size* bytes.

    ``transfer()`` reads it once and returns the seconds that took;
    ``server_cpu()`` is the server's CPU time so far.  Blocking calls give
    up after *timeout* seconds.
    """

    def __init__(self, port: int, path: str, size: int, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.path = path
        self.size = size
        with open(path, "rb") as file:
            self._head = file.read(_CHECKED)
            file.seek(max(0, size - _CHECKED))
            self._tail = file.read()
        self.sock = connect(port, time.monotonic() + timeout)
        self.sock.setblocking(True)
        self.sock.settimeout(timeout)
        self._buffer = memoryview(bytearray(_RECEIVE_SIZE))

    def server_cpu(self) -> float:
        """The server's CPU seconds (user + system) so far."""
        self.sock.sendall(_CPU_REQUEST + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            piece = self.sock.recv(64)
            if not piece:
                raise VerificationError("the file server closed the connection instead of reporting its CPU time")
            reply += piece
        return float(reply)

    def transfer(self) -> float:
        """Ask for the file and read all of it (its ends checked); the seconds that took."""
        sock, view, size = self.sock, self._buffer, self.size
        received = 0
        first = b""
        last = bytearray()
        started = time.perf_counter()
        sock.sendall(self.path.encode() + b"\n")
        while received < size:
            count = sock.recv_into(view, min(_RECEIVE_SIZE, size - received))
            if not count:
                raise VerificationError("the file server closed the connection after %d of %d bytes" % (received, size))
            if len(first) < _CHECKED:
                first += bytes(view[: min(count, _CHECKED - len(first))])
            received += count
            if received > size - _CHECKED:
                last += view[:count]
                del last[: max(0, len(last) - _CHECKED)]
        seconds = time.perf_counter() - started
        if first != self._head[: len(first)] or bytes(last) != self._tail[len(self._tail) - len(last) :]:
            raise VerificationError("the file arrived with other bytes than the file's")
        return seconds

    def close(self) -> None:
        self.sock.close()


def run_files(
    servers: list[str], size: int, transfers: int, progress: Callable[[str], None] = lambda message: None
) -> list[FileTransfer]:
    """Serve a *size*-byte file *transfers* times from each of *servers*; the best transfer of each."""
    results = []
    with tempfile.TemporaryDirectory(prefix="chatcore-files-") as directory:
        path = make_file(directory, size)
        for server in servers:
            with FileServerProcess(server) as process:
                assert process.port is not None
                client = FileClient(process.port, path, size)
                try:
                    best: Optional[FileTransfer] = None
                    for _ in range(transfers):
                        cpu_before = client.server_cpu()
                        seconds = client.transfer()
                        cpu = client.server_cpu() - cpu_before
                        if best is None or seconds < best.seconds:
                            best = FileTransfer(server, size, seconds, cpu, process.detail or server)
                finally:
                    client.close()
            assert best is not None
            progress(
                "  %-20s %6.2f GB/s, server CPU %.2f s per GiB"
                % (server, best.gb_per_s, best.cpu_seconds * (1 << 30) / size)
            )
            results.append(best)
    return results


# --- Command line ----------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m chatcore.benchmark.files serve ...``: run one file server."""
    return serve_main(argv, FileServerProcess, "Server side of chatcore's loopback file benchmark.", serve)


if __name__ == "__main__":
    sys.exit(main())
