"""Benchmark servers in child processes: start, lifelines, port files, clean-up.

The loopback benchmarks (``echo``, ``smtp``) measure a server that runs in
its own process, so that it, not the client, is what gets measured.  This
module is the part they share:

* the child side: ``start_lifeline`` (the server ends when its stdin reaches
  end of file, i.e. the parent closed the pipe or died, or after a maximum
  lifetime, whatever its event loop is doing), ``write_port_file`` (the port
  and what serves, as JSON, written whole) and ``serve_main`` (the ``serve``
  command line every benchmark module offers);
* the parent side: ``ServerProcess``, which starts ``python -m <module>
  serve --server NAME --port-file PATH`` with this very chatcore first on the
  path, waits for the port file within a deadline, checks that the child
  imported the same chatcore, and always stops and reaps the child;
* small helpers of both clients: ``connect``, ``send_rest``, ``percentile``,
  ``per_second``, ``raise_descriptor_limit``, and ``resident_bytes`` (a
  server's memory, read from outside).
"""

import argparse
import json
import os
import selectors
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, Callable, Optional, TypeVar, Union

import chatcore

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_TIMEOUT",
    "LISTEN_BACKLOG",
    "LOOPBACK",
    "BenchmarkError",
    "BenchmarkTimeoutError",
    "ServerProcess",
    "VerificationError",
    "connect",
    "package_root",
    "per_second",
    "percentile",
    "raise_descriptor_limit",
    "resident_bytes",
    "send_rest",
    "serve_main",
    "start_lifeline",
    "write_port_file",
]

DEFAULT_TIMEOUT = 60.0
#: The server process ends by itself after this long, whatever happens to its parent.
DEFAULT_MAX_SECONDS = 300.0
LOOPBACK = "127.0.0.1"
#: Deep enough that thousands of idle connections opened in a burst wait in
#: the accept queue instead of having their handshakes retried.
LISTEN_BACKLOG = 1024


class BenchmarkError(Exception):
    """A benchmark run failed: the server did not start or died, or a connection broke."""


class BenchmarkTimeoutError(BenchmarkError):
    """A benchmark run did not finish within its deadline."""


class VerificationError(BenchmarkError):
    """A connection got back bytes that differ from what the server must send."""


# --- The child side ----------------------------------------------------------------


def start_lifeline(max_seconds: float, watch_stdin: bool, label: str = "benchmark server") -> None:
    """End this process when stdin closes or *max_seconds* pass, whatever the loop does.

    The event loops never return on their own, so daemon threads end the
    process with ``os._exit``; the kernel closes every socket.
    """

    def exit_after_max_seconds() -> None:
        time.sleep(max_seconds)
        sys.stderr.write("%s: max lifetime of %g s reached, exiting\n" % (label, max_seconds))
        sys.stderr.flush()
        os._exit(3)

    def exit_on_stdin_eof() -> None:
        stdin_fd = sys.stdin.fileno()
        while os.read(stdin_fd, 4096):
            pass
        os._exit(0)

    threading.Thread(target=exit_after_max_seconds, name="max-lifetime", daemon=True).start()
    if watch_stdin and sys.stdin is not None:
        threading.Thread(target=exit_on_stdin_eof, name="stdin-lifeline", daemon=True).start()


def write_port_file(port_file: str, port: int, server: str, detail: str, serves_chatcore: bool, **extra: Any) -> None:
    """Tell the parent where this server listens and what serves, as JSON.

    *serves_chatcore* says whether chatcore is what serves (its framing
    engine is then reported as ``implementation``); *extra* items are added
    as they are.  Written whole then renamed, so the parent never reads half
    a file.
    """
    info = {
        "port": port,
        "pid": os.getpid(),
        "server": server,
        "detail": detail,
        "implementation": chatcore.implementation if serves_chatcore else None,
        "chatcore_engine": chatcore.implementation,
        "chatcore_file": os.path.realpath(chatcore.__file__),
        "python": sys.executable,
    }
    info.update(extra)
    partial = port_file + ".partial"
    with open(partial, "w") as stream:
        json.dump(info, stream)
    os.replace(partial, port_file)


def serve_main(
    argv: Optional[list[str]],
    process_class: "type[ServerProcess]",
    description: str,
    serve: Callable[[str, str, float, bool], None],
) -> int:
    """The ``serve`` command line of a benchmark module: parse, then ``serve(...)``.

    *process_class* is the module's ``ServerProcess``, the parent side of
    this command: its ``module`` names the command, its ``servers`` and
    ``fault_servers`` are what ``--server`` accepts.  *serve* is called with
    the server name, the port file, the maximum lifetime in seconds and
    whether to watch stdin.
    """
    parser = argparse.ArgumentParser(prog="python -m " + process_class.module, description=description)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve", help="run one server on 127.0.0.1 (a free port, written to --port-file)"
    )
    serve_parser.add_argument(
        "--server",
        required=True,
        choices=process_class.servers + process_class.fault_servers,
        help="which implementation serves (fault:* misbehave on purpose, for tests)",
    )
    serve_parser.add_argument(
        "--port-file", required=True, help="where to write the port, as JSON with which chatcore and engine serve"
    )
    serve_parser.add_argument(
        "--max-seconds",
        type=float,
        default=DEFAULT_MAX_SECONDS,
        help="exit after this many seconds whatever happens (default %g)" % DEFAULT_MAX_SECONDS,
    )
    serve_parser.add_argument(
        "--ignore-stdin",
        action="store_true",
        help="keep serving when stdin reaches end of file (by default that ends the server)",
    )
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return 2
    serve(args.server, args.port_file, args.max_seconds, not args.ignore_stdin)
    return 0


# --- The parent side -----------------------------------------------------------------


def package_root() -> str:
    """The directory the running chatcore package was imported from."""
    return os.path.dirname(os.path.dirname(os.path.realpath(chatcore.__file__)))


_Server = TypeVar("_Server", bound="ServerProcess")


class ServerProcess:
    """A benchmark server in a child process running this chatcore, as a context manager.

    Subclasses name the module whose ``serve`` command runs (``module``) and
    what the error messages call the server (``label``).  ``start()`` returns
    once the server listens (or raises within *startup_timeout*); ``stop()``
    ends and reaps the process, and is safe to call at any time, any number
    of times.
    """

    module = ""
    label = "benchmark server"
    #: The rows this kind of server knows, and those that misbehave on purpose
    #: (for the harness's own tests; never listed as available).
    servers: tuple[str, ...] = ()
    fault_servers: tuple[str, ...] = ()

    @staticmethod
    def available_servers() -> list[str]:
        """The rows of ``servers`` this Python can run."""
        return []

    def __init__(self, server: str, max_seconds: float = DEFAULT_MAX_SECONDS):
        available = self.available_servers()
        if server not in self.servers + self.fault_servers:
            raise ValueError("unknown %s %r; available here: %s" % (self.label, server, ", ".join(available)))
        if server in self.servers and server not in available:
            raise ValueError(
                "%s %r cannot run on this Python; available here: %s" % (self.label, server, ", ".join(available))
            )
        self.server = server
        self.max_seconds = max_seconds
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.port: Optional[int] = None
        self.info: dict[str, Any] = {}
        self._workdir: Optional[tempfile.TemporaryDirectory] = None  # type: ignore[type-arg]
        self._stderr_file: Any = None

    @property
    def implementation(self) -> Optional[str]:
        """The framing engine of the chatcore that serves; None when chatcore does not."""
        return self.info.get("implementation")

    @property
    def detail(self) -> Optional[str]:
        """What serves, as the server reported it."""
        return self.info.get("detail")

    @property
    def send_timing(self) -> Optional[str]:
        """When an asyncore-style server's pushes reached the peer (``echo.probe_send_timing``)."""
        return self.info.get("send_timing")

    @property
    def ac_coalesce_sends(self) -> Union[bool, str, None]:
        """The ``ac_coalesce_sends`` a chatcore server runs with; None for the others."""
        return self.info.get("ac_coalesce_sends")

    def report(self) -> dict[str, Any]:
        """What served, as the result records of the benchmarks name it."""
        return {
            "server": self.server,
            "implementation": self.implementation,
            "server_detail": self.detail,
            "server_pid": self.process.pid if self.process is not None else None,
            "server_returncode": self.process.returncode if self.process is not None else None,
            "send_timing": self.send_timing,
            "ac_coalesce_sends": self.ac_coalesce_sends,
        }

    def start(self, startup_timeout: float = 30.0) -> "ServerProcess":
        if self._workdir is not None or self.process is not None:
            raise RuntimeError("a %s starts only once" % type(self).__name__)
        deadline = time.monotonic() + startup_timeout
        # The child must import this very chatcore, even from a source tree
        # that is not on the default path: put its root first.
        root = package_root()
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [root] + [entry for entry in [os.environ.get("PYTHONPATH")] if entry]
        )
        try:
            self._workdir = tempfile.TemporaryDirectory(prefix="chatcore-bench-")
            port_file = os.path.join(self._workdir.name, "port.json")
            self._stderr_file = open(os.path.join(self._workdir.name, "stderr.txt"), "w+b")
            command = [
                sys.executable,
                "-m",
                self.module,
                "serve",
                "--server",
                self.server,
                "--port-file",
                port_file,
                "--max-seconds",
                repr(self.max_seconds),
            ]
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,  # the lifeline: the child exits when it closes
                stdout=subprocess.DEVNULL,
                stderr=self._stderr_file,
                env=environment,
                # `-m` puts the working directory first on sys.path; make it the same root.
                cwd=root,
            )
            self._wait_for_port_file(port_file, deadline, startup_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_port_file(self, port_file: str, deadline: float, startup_timeout: float) -> None:
        assert self.process is not None
        while not os.path.exists(port_file):
            if self.process.poll() is not None:
                raise BenchmarkError(
                    "%s %r exited with status %s before listening%s"
                    % (self.label, self.server, self.process.returncode, self.stderr_tail())
                )
            if time.monotonic() >= deadline:
                raise BenchmarkTimeoutError(
                    "%s %r did not start listening within %g s%s"
                    % (self.label, self.server, startup_timeout, self.stderr_tail())
                )
            time.sleep(0.01)
        with open(port_file) as stream:
            self.info = json.load(stream)
        mine = os.path.realpath(chatcore.__file__)
        if self.info.get("chatcore_file") != mine:
            raise BenchmarkError(
                "%s %r imported chatcore from %s, the benchmark from %s"
                % (self.label, self.server, self.info.get("chatcore_file"), mine)
            )
        self.port = int(self.info["port"])

    def stderr_tail(self, limit: int = 2000) -> str:
        """The end of what the server wrote to stderr, as a suffix for an error message."""
        if self._stderr_file is None:
            return ""
        self._stderr_file.flush()
        self._stderr_file.seek(0)
        text: str = self._stderr_file.read().decode("utf-8", "replace").strip()
        if not text:
            return ""
        return "; its stderr:\n" + text[-limit:]

    def stop(self) -> None:
        process = self.process
        if process is not None:
            try:
                if process.stdin is not None:
                    process.stdin.close()  # asks the lifeline thread to exit
                try:
                    process.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    process.terminate()
                    try:
                        process.wait(timeout=5.0)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait(timeout=5.0)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self: _Server) -> _Server:
        if self.process is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- Client helpers ------------------------------------------------------------------


def raise_descriptor_limit(wanted: int) -> int:
    """Raise this process's soft descriptor limit towards *wanted* (up to the hard limit).

    Returns the soft limit in force afterwards; unchanged where the platform
    has no ``resource`` module.
    """
    try:
        import resource
    except ImportError:
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    while target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            # macOS refuses a soft limit above kern.maxfilesperproc even
            # under an "unlimited" hard limit: settle for less.
            target //= 2
    return soft


def connect(port: int, deadline: float) -> socket.socket:
    """A non-blocking TCP_NODELAY client socket connected to 127.0.0.1:*port*.

    The client turns Nagle's algorithm off so that it never delays a request
    itself; the server keeps its framework's own defaults.
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BenchmarkTimeoutError("no time left to connect to the server")
    sock = socket.create_connection((LOOPBACK, port), timeout=remaining)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def per_second(count: float, seconds: float) -> float:
    """*count* over *seconds*; infinite for a run too short for the clock to see."""
    return count / seconds if seconds > 0 else float("inf")


def resident_bytes(pid: int) -> Optional[int]:
    """The resident set size of process *pid*, from /proc (Linux); None elsewhere or once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def percentile(sorted_values: Sequence[int], percent: float) -> int:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, -(-len(sorted_values) * percent // 100))
    return sorted_values[int(rank) - 1]


def send_rest(sock: socket.socket, data: bytes, sent: int, deadline: float) -> None:
    """Send what a non-blocking *sock* did not take of *data* (from *sent* on), by *deadline*.

    The clients send a request with one ``send``; this finishes the rare one
    the socket took only part of.
    """
    rest = memoryview(data)[sent:]
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_WRITE)
        while rest:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchmarkTimeoutError("could not send a %d-byte request before the deadline" % len(data))
            selector.select(remaining)
            try:
                rest = rest[sock.send(rest) :]
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass  # a TLS socket says "not now" in its own words
            except OSError as error:
                raise BenchmarkError("sending a request: %s" % error) from error
