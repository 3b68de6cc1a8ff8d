"""A small static-file HTTP/1.0 and 1.1 server on chatcore.

It answers GET and HEAD for the files under a root directory, one request per
connection (every response says ``Connection: close``)::

    python examples/http_static.py --root ./site --port 8000
    curl http://127.0.0.1:8000/index.html

Lines of a request head may end in a bare ``\\n`` as well as in ``\\r\\n``.  A
client has ``--head-timeout`` seconds (10 by default) from connecting to send
its whole request head, or it is answered 408 and closed: one that sends a
byte now and then would otherwise hold its connection for ever, as no idle
timeout would notice.  ``--idle-timeout`` (60 s by default) closes a
connection with no byte received or sent for that long, a slow download
included, and ``--max-output`` (1 MiB by default) bounds what is queued for
one connection before the server stops reading from it; 0 turns any of the
three off.

Nothing outside the root is ever served: a request path is percent-decoded,
``..`` segments are refused, and the file finally chosen must resolve
(``os.path.realpath``, so symlinks are followed) to a place inside the real
root.  A refused path gets the same 404 as a missing file, so the answer does
not tell whether something exists outside the root.

File bodies go out with ``push_file()`` (``os.sendfile`` where the socket
allows, else read in chunks), so a large file is never held in memory and
never more than its announced ``Content-Length`` is sent.  A client that half-closes after its
request (``nc -N``, some HTTP/1.0 tools) still gets the whole response:
chatcore's ``async_chat`` sends what is queued before it closes at the end of
a peer's input.  ``start_http_server`` builds a server on any channel map, so
tests can serve from their own loop; ``parse_arguments`` reads the command
line and ``handler_for`` makes the handler class it asks for.
"""

import argparse
import email.utils
import functools
import mimetypes
import os
import re
import socket
import stat
import sys
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, NamedTuple, Optional
from urllib.parse import unquote, urlsplit

import chatcore
from chatcore.demo import Listener, add_serving_options, handler_with, seconds_argument, serve, serving_limits

__all__ = [
    "HTTPRequestHandler",
    "Request",
    "RequestError",
    "content_type",
    "handler_for",
    "main",
    "parse_arguments",
    "parse_request_head",
    "resolve_path",
    "start_http_server",
]

SERVER_NAME = "chatcore-http-static/%s" % chatcore.__version__
ALLOWED_METHODS = ("GET", "HEAD")

# RFC 9110 "token": what a method name and a header name may contain.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_HTTP_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])\Z")
# A request target is visible ASCII only; anything else is a malformed request.
_TARGET = re.compile(r"[\x21-\x7e]+\Z")
# What ends a line of a request head: whichever comes first in the stream.
_LINE_ENDINGS = (b"\r\n", b"\n")


class RequestError(Exception):
    """The request cannot be served; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, detail: str = ""):
        Exception.__init__(self, status, detail)
        self.status = status
        self.detail = detail


class Request(NamedTuple):
    """A parsed request head; ``path`` is percent-decoded, header names are lower case."""

    method: str
    path: str
    version: tuple[int, int]
    headers: dict[str, str]


def _request_path(target: str) -> str:
    """The percent-decoded path of an origin-form or absolute-form target."""
    if target.startswith("/"):
        raw_path = target
    elif target.lower().startswith(("http://", "https://")):
        raw_path = urlsplit(target).path or "/"
    else:
        raise RequestError(400, "unsupported request target %r" % target)
    raw_path = raw_path.split("?", 1)[0].split("#", 1)[0]
    # surrogateescape keeps non-UTF-8 bytes as os.fsdecode() would name them.
    path = unquote(raw_path, encoding="utf-8", errors="surrogateescape")
    if "\x00" in path:
        raise RequestError(400, "NUL in request path")
    return path


def parse_request_head(head_lines: Sequence[bytes]) -> Request:
    """Parse a request head given as its lines: the request line, then the header lines.

    The lines come without their line endings, and without the empty line
    that ends the head.  Raises RequestError with 400 for anything malformed
    and 505 for an HTTP major version other than 1.
    """
    lines = [line.decode("latin-1") for line in head_lines]
    if not lines:
        raise RequestError(400, "empty request")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise RequestError(400, "malformed request line")
    method, target, version_text = parts
    if not _TOKEN.match(method):
        raise RequestError(400, "malformed method")
    version_match = _HTTP_VERSION.match(version_text)
    if not version_match:
        raise RequestError(400, "malformed HTTP version")
    version = (int(version_match.group(1)), int(version_match.group(2)))
    if version[0] != 1:
        raise RequestError(505, "only HTTP/1.x is supported")
    if not _TARGET.match(target):
        raise RequestError(400, "malformed request target")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # A name with surrounding whitespace (including obsolete line folding) is invalid.
        if not colon or not _TOKEN.match(name):
            raise RequestError(400, "malformed header line")
        headers[name.lower()] = value.strip(" \t")
    if version >= (1, 1) and "host" not in headers:
        raise RequestError(400, "HTTP/1.1 request without Host")
    return Request(method, _request_path(target), version, headers)


def _is_within(root: str, path: str) -> bool:
    try:
        return os.path.commonpath([root, path]) == root
    except ValueError:  # different drives, or one path relative
        return False


def resolve_path(root: str, request_path: str) -> Optional[str]:
    """The real path of the regular file to serve for *request_path*, or None.

    *root* must already be a real path.  A directory stands for its
    ``index.html``.  None means "answer 404": missing, not a regular file, or
    resolving outside *root*.
    """
    segments = [segment for segment in request_path.split("/") if segment not in ("", ".")]
    for segment in segments:
        if segment == ".." or os.sep in segment or (os.altsep and os.altsep in segment):
            return None
        if os.path.splitdrive(segment)[0] or os.path.isabs(segment):
            return None
    path = os.path.realpath(os.path.join(root, *segments))
    if os.path.isdir(path):
        path = os.path.realpath(os.path.join(path, "index.html"))
    # Checked on the final path: index.html itself may be a symlink leading out.
    if not _is_within(root, path) or not os.path.isfile(path):
        return None
    return path


def content_type(path: str) -> str:
    """The Content-Type for *path*, from its name."""
    mime_type, encoding = mimetypes.guess_type(path)
    if mime_type is None or encoding is not None:
        # "x.tar.gz" is gzip data, not a tar file: without Content-Encoding
        # support the honest answer is plain bytes.
        return "application/octet-stream"
    return mime_type


class HTTPRequestHandler(chatcore.async_chat):
    """One connection: read one request head, answer it, close when sent."""

    #: A head of more than this many bytes (line endings included) is refused with 431.
    max_head_size = 64 * 1024
    #: Seconds from connecting to a complete request head, or None for no
    #: limit; a client that takes longer is answered 408 and closed.
    head_timeout: Optional[float] = 10.0

    def __init__(self, sock: Optional[socket.socket] = None, map: Optional[dict[int, Any]] = None, root: str = "."):
        chatcore.async_chat.__init__(self, sock, map)
        self.root = os.path.realpath(root)
        self._line_parts: list[bytes] = []
        self._head_lines: list[bytes] = []
        self._head_size = 0
        self._skipped_empty_line = False
        self._responded = False
        # Framed line by line, each line ending in b"\r\n" or in a bare
        # b"\n" (RFC 9112 section 2.2 lets a server accept those), whichever
        # comes first; a head of bare-LF lines never shows b"\r\n\r\n".
        self.set_terminator(_LINE_ENDINGS)
        self._head_deadline: Optional[chatcore.TimerHandle] = None
        if sock is not None and self.head_timeout is not None:
            self._head_deadline = chatcore.call_later(self.head_timeout, self._head_timed_out, map=map)

    def collect_incoming_data(self, data: bytes) -> None:
        if self._responded:
            return  # one request per connection: whatever follows is dropped
        if self._head_grew_too_large(len(data)):
            return
        self._line_parts.append(data)

    def found_terminator(self) -> None:
        if self._responded or self._head_grew_too_large(len(self.matched_terminator or b"")):
            return
        line = b"".join(self._line_parts)
        self._line_parts.clear()
        if line:
            self._head_lines.append(line)
        elif not self._head_lines and not self._skipped_empty_line:
            # RFC 9112 section 2.2: ignore at least one empty line before the
            # request line.  Only one: a client sending nothing but empty
            # lines is told 400 at the second.
            self._skipped_empty_line = True
        else:
            self._answer(self._head_lines)

    def _head_grew_too_large(self, size: int) -> bool:
        """Count *size* more bytes of the head; answers 431 (and True) past ``max_head_size``."""
        self._head_size += size
        if self._head_size > self.max_head_size:
            self._send_error(431, head_only=False)
            return True
        return False

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.connected and not self._responded:
            self._send_error(408, head_only=False)

    def _cancel_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _answer(self, head_lines: list[bytes]) -> None:
        try:
            request = parse_request_head(head_lines)
        except RequestError as error:
            self._send_error(error.status, head_only=False)
            return
        head_only = request.method == "HEAD"
        if request.method not in ALLOWED_METHODS:
            self._send_error(405, head_only, [("Allow", ", ".join(ALLOWED_METHODS))])
            return
        self._serve_file(request.path, head_only)

    def _serve_file(self, request_path: str, head_only: bool) -> None:
        path = resolve_path(self.root, request_path)
        if path is None:
            self._send_error(404, head_only)
            return
        # O_NONBLOCK: should the path have become a FIFO since it was checked,
        # open() must not block the whole server.
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            descriptor = os.open(path, flags)
        except PermissionError:
            self._send_error(403, head_only)
            return
        except OSError:
            self._send_error(404, head_only)
            return
        file = os.fdopen(descriptor, "rb")
        try:
            info = os.fstat(file.fileno())
            if not stat.S_ISREG(info.st_mode):
                file.close()
                self._send_error(404, head_only)
                return
            headers = [
                ("Content-Type", content_type(path)),
                ("Content-Length", str(info.st_size)),
                ("Last-Modified", email.utils.formatdate(info.st_mtime, usegmt=True)),
            ]
            self._send_head(200, headers)
            if head_only:
                file.close()
            else:
                # Closed once sent, or when the channel closes (a client
                # that leaves mid-transfer); never more than Content-Length.
                self.push_file(file, 0, info.st_size, close=True)
        except BaseException:
            file.close()
            raise
        self.close_when_done()

    def _send_head(self, status: int, headers: list[tuple[str, str]]) -> None:
        self._responded = True
        self._cancel_head_deadline()
        self._head_lines.clear()
        # Everything after the head is now ignored, so stop looking for terminators.
        self.set_terminator(None)
        lines = ["HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase)]
        lines.append("Date: %s" % email.utils.formatdate(usegmt=True))
        lines.append("Server: %s" % SERVER_NAME)
        lines.extend("%s: %s" % header for header in headers)
        lines.append("Connection: close")
        self.push(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _send_error(self, status: int, head_only: bool, extra_headers: Optional[list[tuple[str, str]]] = None) -> None:
        body = ("%d %s\n" % (status, HTTPStatus(status).phrase)).encode("ascii")
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
        self._send_head(status, headers + (extra_headers or []))
        if not head_only:
            self.push(body)
        self.close_when_done()

    def close(self) -> None:
        self._cancel_head_deadline()
        chatcore.async_chat.close(self)


def start_http_server(
    root: str,
    channel_map: Optional[dict[int, Any]],
    host: str = "127.0.0.1",
    port: int = 0,
    handler_class: type = HTTPRequestHandler,
) -> Listener:
    """A static-file server for *root* on (host, port), its channels living in *channel_map*."""
    return Listener(functools.partial(handler_class, root=root), host, port, map=channel_map)


def parse_arguments(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The command line *argv* (default: ``sys.argv[1:]``), checked; exits on a bad one."""
    parser = argparse.ArgumentParser(description="Static-file HTTP server on chatcore.")
    parser.add_argument("--root", default=".", help="directory to serve (default: the current one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default)")
    parser.add_argument(
        "--head-timeout",
        type=seconds_argument,
        default=HTTPRequestHandler.head_timeout,
        metavar="SECONDS",
        help="answer 408 and close a connection whose request head is not complete this long after it opened; "
        "0: no limit (default %(default)s)",
    )
    add_serving_options(parser)
    args = parser.parse_args(argv)
    if not os.path.isdir(args.root):
        parser.error("--root %r is not a directory" % args.root)
    return args


def handler_for(args: argparse.Namespace, base: type = HTTPRequestHandler) -> type:
    """The handler class to serve with: *base* with the limits the parsed command line *args* set."""
    return handler_with(base, head_timeout=args.head_timeout or None, **serving_limits(args))


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_arguments(argv)
    channel_map: dict[int, Any] = {}
    try:
        try:
            server = start_http_server(args.root, channel_map, args.host, args.port, handler_for(args))
        except OSError as error:
            print("cannot listen on %s:%d: %s" % (args.host, args.port, error), file=sys.stderr)
            return 1
        host, port = server.address
        url_host = "[%s]" % host if ":" in host else host
        print(
            "serving %s on http://%s:%d/ (engine: %s)"
            % (os.path.realpath(args.root), url_host, port, chatcore.implementation),
            flush=True,
        )
        serve(channel_map, args.event_loop)
    except KeyboardInterrupt:
        pass
    finally:
        chatcore.close_all(channel_map)
    return 0


if __name__ == "__main__":
    sys.exit(main())
