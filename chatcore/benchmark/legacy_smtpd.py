"""A stdlib-era SMTP server: the legacy program the request/response benchmark serves.

Written the way servers were written against ``import asynchat, asyncore``
before Python 3.12 removed them, and meant to stay that way: a listening
``asyncore.dispatcher`` hands each connection to an ``asynchat.async_chat``
channel that reads command lines ending ``\\r\\n`` and answers each with one
reply line; DATA switches the terminator to ``\\r\\n.\\r\\n`` for the message
body and back.  Commands: HELO, MAIL FROM:<...>, RCPT TO:<...>, DATA, RSET,
NOOP, QUIT.  The body's dot-stuffing is undone; the message is then kept only
as a count, and its reply names its number in the session, its size and its
CRC-32, so a client can check that every body was framed exactly.

The benchmark (``chatcore.benchmark.smtp``, and the in-process workloads of
``chatcore.benchmark.inprocess``) runs this file unchanged on each row's
modules: it is imported while ``asynchat``/``asyncore`` name the standard
library's or PyPI's copies, chatcore's drop-in compat modules (after
``chatcore.compat.install()``), or chatcore's own API.  Nothing here may know
which: no chatcore names, nothing but what those modules offered.
"""

import asynchat
import asyncore
import socket
import zlib

__all__ = ["SMTPChannel", "SMTPServer", "serve"]

NEWLINE = b"\r\n"
END_OF_DATA = b"\r\n.\r\n"


class SMTPChannel(asynchat.async_chat):
    """One SMTP session: a command, its reply, the next command."""

    COMMAND = 0
    DATA = 1

    def __init__(self, server, conn, addr, map=None):
        asynchat.async_chat.__init__(self, conn, map=map)
        self.smtp_server = server
        self.peer = addr
        self.received = []
        self.state = self.COMMAND
        self.greeting = None
        self.mailfrom = None
        self.rcpttos = []
        self.messages = 0
        self.set_terminator(NEWLINE)
        self.reply("220 %s SMTP ready" % server.hostname)

    def reply(self, text):
        self.push((text + "\r\n").encode("utf-8"))

    # asynchat's two callbacks

    def collect_incoming_data(self, data):
        self.received.append(data)

    def found_terminator(self):
        data = b"".join(self.received)
        self.received = []
        if self.state == self.COMMAND:
            self.command(data.decode("utf-8", "replace"))
        else:
            self.message(data)

    def command(self, line):
        if not line:
            self.reply("500 Error: bad syntax")
            return
        verb, _, arg = line.partition(" ")
        method = getattr(self, "smtp_" + verb.upper(), None)
        if method is None:
            self.reply('502 Error: command "%s" not implemented' % verb.upper())
            return
        method(arg.strip())

    def message(self, data):
        lines = []
        for line in data.split(NEWLINE):
            if line[:1] == b".":
                line = line[1:]  # undo the client's dot-stuffing
            lines.append(line)
        body = NEWLINE.join(lines)
        self.messages += 1
        self.smtp_server.process_message(self.peer, self.mailfrom, self.rcpttos, body)
        self.mailfrom = None
        self.rcpttos = []
        self.state = self.COMMAND
        self.set_terminator(NEWLINE)
        self.reply(
            "250 OK: message %d, %d bytes, crc32 %08x" % (self.messages, len(body), zlib.crc32(body) & 0xFFFFFFFF)
        )

    @staticmethod
    def address(arg, keyword):
        if arg[: len(keyword)].upper() != keyword:
            return None
        address = arg[len(keyword) :].strip()
        if len(address) > 2 and address[0] == "<" and address[-1] == ">":
            return address[1:-1]
        return None

    # the commands

    def smtp_HELO(self, arg):
        if not arg:
            self.reply("501 Syntax: HELO hostname")
        elif self.greeting:
            self.reply("503 Duplicate HELO")
        else:
            self.greeting = arg
            self.reply("250 %s" % self.smtp_server.hostname)

    def smtp_NOOP(self, arg):
        self.reply("501 Syntax: NOOP" if arg else "250 OK")

    def smtp_QUIT(self, arg):
        self.reply("221 Bye")
        self.close_when_done()

    def smtp_MAIL(self, arg):
        if not self.greeting:
            self.reply("503 Error: send HELO first")
            return
        address = self.address(arg, "FROM:")
        if address is None:
            self.reply("501 Syntax: MAIL FROM:<address>")
        elif self.mailfrom:
            self.reply("503 Error: nested MAIL command")
        else:
            self.mailfrom = address
            self.reply("250 OK")

    def smtp_RCPT(self, arg):
        if not self.mailfrom:
            self.reply("503 Error: need MAIL command")
            return
        address = self.address(arg, "TO:")
        if address is None:
            self.reply("501 Syntax: RCPT TO:<address>")
        else:
            self.rcpttos.append(address)
            self.reply("250 OK")

    def smtp_RSET(self, arg):
        if arg:
            self.reply("501 Syntax: RSET")
            return
        self.mailfrom = None
        self.rcpttos = []
        self.reply("250 OK")

    def smtp_DATA(self, arg):
        if not self.rcpttos:
            self.reply("503 Error: need RCPT command")
        elif arg:
            self.reply("501 Syntax: DATA")
        else:
            self.state = self.DATA
            self.set_terminator(END_OF_DATA)
            self.reply("354 End data with <CR><LF>.<CR><LF>")


class SMTPServer(asyncore.dispatcher):
    """Listens on *localaddr* and serves every connection with ``channel_class``."""

    channel_class = SMTPChannel

    def __init__(self, localaddr, hostname="localhost", map=None):
        asyncore.dispatcher.__init__(self, map=map)
        self.hostname = hostname
        self.channel_map = map
        self.messages = 0
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind(localaddr)
        self.listen(5)

    def handle_accepted(self, conn, addr):
        self.channel_class(self, conn, addr, map=self.channel_map)

    def process_message(self, peer, mailfrom, rcpttos, data):
        self.messages += 1


def serve(port=0, on_listening=None):
    """Listen on 127.0.0.1:*port*, tell *on_listening* the port, serve forever."""
    server = SMTPServer(("127.0.0.1", port))
    if on_listening is not None:
        on_listening(server.socket.getsockname()[1])  # type: ignore[union-attr]
    asyncore.loop()
