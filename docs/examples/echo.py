"""A line-echo server on chatcore: the quick start's example."""

import socket

import chatcore


class EchoHandler(chatcore.async_chat):
    def __init__(self, sock, map=None):
        super().__init__(sock, map)
        self.set_terminator(b"\n")
        self.received = []

    def collect_incoming_data(self, data):
        self.received.append(data)

    def found_terminator(self):
        line = b"".join(self.received)
        self.received = []
        self.push(line + b"\n")


class EchoServer(chatcore.dispatcher):
    def __init__(self, host, port):
        super().__init__()
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.set_reuse_addr()
        self.bind((host, port))
        self.listen(128)

    def handle_accepted(self, sock, addr):
        EchoHandler(sock)


if __name__ == "__main__":
    EchoServer("127.0.0.1", 7000)
    chatcore.loop()
