"""Channel classes the socket tests build their servers on: a byte reader, line framing."""

from typing import Any

import chatcore


class Reader(chatcore.dispatcher):
    """Counts bytes; readable only."""

    def __init__(self, sock, channel_map):
        super().__init__(sock, map=channel_map)
        self.received = b""
        self.closed_by_peer = False

    def writable(self):
        return False

    def handle_read(self):
        self.received += self.recv(4096)

    def handle_close(self):
        self.closed_by_peer = True
        self.close()


def line_channel_class(chat_class: type, channel_map: dict[int, Any], terminator: bytes = b"\n") -> type:
    """*chat_class* framing lines on *channel_map*; each line is kept in ``lines``, then passed to ``line()``.

    It collects through ``_collect_incoming_data`` (so ``incoming`` holds what
    has arrived of the current line) and counts ``handle_close`` calls in
    ``closed_count`` before closing.  Subclasses answer in ``line()``.
    """

    class Lines(chat_class):
        def __init__(self, sock):
            super().__init__(sock, map=channel_map)
            self.set_terminator(terminator)
            self.lines = []
            self.closed_count = 0

        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            line = self._get_data()
            self.lines.append(line)
            self.line(line)

        def line(self, line):
            """Subclasses answer here."""

        def handle_close(self):
            self.closed_count += 1
            self.close()

    return Lines
