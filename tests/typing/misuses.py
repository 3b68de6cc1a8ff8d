"""Mistakes the type checkers must report: each line below is one, silenced by name.

Every misuse carries ``# type: ignore[<mypy code>]`` and ``# pyright:
ignore[<pyright rule>]``.  mypy runs with ``warn_unused_ignores`` and pyright
with ``reportUnnecessaryTypeIgnoreComment`` (pyproject.toml; pyright reads
only its own comments there), so a misuse a checker stops seeing, or sees as
another error, fails the typing test.  Each is wrong at run time too, in
chatcore as in CPython 3.11's asynchat/asyncore (noted beside it); what
legacy code legitimately does (a str terminator with ``use_encoding``, a
byte-count terminator, a bytearray or memoryview pushed) is in
user_program.py instead, where it must pass.

Never imported or run: only type-checked.
"""

import socket
from typing import Any

import chatcore
from chatcore.compat import asynchat


class Handler(chatcore.async_chat):
    def collect_incoming_data(self, data: bytes) -> None:
        pass

    def found_terminator(self) -> None:
        # push() takes bytes-like data only: a str is a TypeError, whatever use_encoding says.
        self.push("text\r\n")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        # A terminator is bytes, a count or None: a float fails at the next read.
        self.set_terminator(1.5)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        # set_terminator is a method: the channel is not passed again, the terminator is.
        self.set_terminator()  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
        # A producer needs more(); an int has none (handle_error() at the first send).
        self.push_with_producer(42)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        # A size limit is an int or None ("1k" raises TypeError when set).
        self.ac_max_message_size = "1k"  # type: ignore[assignment]  # pyright: ignore[reportAttributeAccessIssue]


class BadProducer:
    def more(self) -> int:
        return 0


def push_a_bad_producer(channel: chatcore.async_chat) -> None:
    # more() must give bytes: an int is never sent (stdlib calls more() on it next).
    channel.push_with_producer(BadProducer())  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


class StrCollector(chatcore.async_chat):
    # The framer hands over bytes, never str.
    def collect_incoming_data(self, data: str) -> None:  # type: ignore[override]  # pyright: ignore[reportIncompatibleMethodOverride]
        pass

    # found_terminator() is called without arguments.
    def found_terminator(self, data: bytes) -> None:  # type: ignore[override]  # pyright: ignore[reportIncompatibleMethodOverride]
        pass


class StrMessages(chatcore.message_chat):
    # Each message is one bytes object.
    def handle_message(self, message: str) -> None:  # type: ignore[override]  # pyright: ignore[reportIncompatibleMethodOverride]
        pass


class TooBig(chatcore.message_chat):
    # max_message_size is an int or None: a float is refused when the class is made.
    max_message_size = 1e6  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]


class Listener(chatcore.dispatcher):
    # handle_accepted() gets the socket and the peer's address.
    def handle_accepted(self, sock: socket.socket) -> None:  # type: ignore[override]  # pyright: ignore[reportIncompatibleMethodOverride]
        sock.close()


class LegacyHandler(asynchat.async_chat):
    def found_terminator(self) -> None:
        # The compat class is the same API: push() still refuses str.
        self.push("text")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def run_the_loop(channel_map: dict[int, Any]) -> None:
    # The timeout is in seconds, a number.
    chatcore.loop(timeout="30", map=channel_map)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # A channel map is a dict of descriptors to channels.
    chatcore.loop(map=[Handler()])  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    # poll2() is one turn: it takes no count (loop() does).
    chatcore.poll2(0.1, channel_map, 3)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
