"""The terminator search finds exactly what ``bytes.find`` finds, on both engines.

The compiled engine does not call memmem for a terminator of two bytes or
more: it tests candidate positions for two of the terminator's bytes (chosen
as the rarest by a fixed ranking), 16 positions at a time with SSE2 on
x86-64 and with memchr elsewhere, and goes over to memmem when false
candidates are common.  These tests feed streams split by a terminator
and compare with ``bytes.split``: matches at every offset (the first
position, across 16-byte blocks, in the last bytes of a read), terminators
made of every class of byte, many near misses, and data built to make
candidates common.
"""

import pytest
from helpers.recorders import MessageRecorder, chunked
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


class Pieces:
    """The collect-mode callbacks, joined into messages."""

    def __init__(self, terminator):
        self.terminator = terminator
        self.current = []
        self.messages = []

    def get_terminator(self):
        return self.terminator

    def collect_incoming_data(self, data):
        self.current.append(data)

    def found_terminator(self):
        self.messages.append(b"".join(self.current))
        self.current = []


def split_by_framer(engine, stream, terminator, read_size=None):
    """Messages of *stream* as message mode and collect mode find them (both must agree)."""
    reads = [stream] if read_size is None else chunked(stream, read_size)
    found = []
    for channel, feed in ((MessageRecorder(terminator), "feed_messages"), (Pieces(terminator), "feed")):
        framer = engine.Framer()
        for data in reads:
            if feed == "feed":
                framer.feed(channel, data, False, None)
            else:
                framer.feed_messages(channel, data, None)
        found.append(channel.messages)
    assert found[0] == found[1]
    return found[0]


# Terminators of every byte class the compiled search ranks differently.
TERMINATORS = [
    b"\r\n",
    b"\n\n",
    b"\r\n\r\n",
    b"\r\n.\r\n",
    b"ab",
    b"--boundary--",
    b"\x00\x00",
    b"\xff\xfe",
    b"\x01\x02\x03",
    b"END",
    b"a.b",
    b"\t;\t",
    b"zz" * 20,
    b"x" * 2 + b"y",
]


@pytest.mark.parametrize("terminator", TERMINATORS)
def test_a_match_at_every_offset(engine, terminator):
    for offset in range(70):
        stream = b"q" * offset + terminator + b"w" * 40
        assert split_by_framer(engine, stream, terminator) == [b"q" * offset]


@pytest.mark.parametrize("terminator", TERMINATORS)
def test_a_match_in_the_last_bytes(engine, terminator):
    for length in range(len(terminator), len(terminator) + 40):
        stream = b"q" * (length - len(terminator)) + terminator
        assert split_by_framer(engine, stream, terminator) == [b"q" * (length - len(terminator))]


@pytest.mark.parametrize("terminator", TERMINATORS)
def test_near_misses_everywhere(engine, terminator):
    # Every proper prefix and every one-byte change of the terminator, many times.
    misses = [terminator[:n] for n in range(1, len(terminator))]
    misses += [terminator[:n] + bytes([terminator[n] ^ 1]) + terminator[n + 1 :] for n in range(len(terminator))]
    body = b"|".join(misses) * 20
    assert terminator not in body
    stream = (body + terminator) * 3
    assert split_by_framer(engine, stream, terminator) == [body] * 3
    assert split_by_framer(engine, stream, terminator, read_size=61) == [body] * 3


@pytest.mark.parametrize(
    "terminator,filler",
    [
        (b"aaaaab", b"a"),
        (b"\r\n\r\n", b"\r\n"),
        (b"ab" * 8 + b"c", b"ab"),
        (b"\x00\x00\x01", b"\x00"),
        (b"axxxb", b"ayyyb"),
        (b"\r\n.\r\n", b"\r\n.\n\n"),
    ],
)
def test_candidates_everywhere(engine, terminator, filler):
    # Data where the rare bytes the search tests are at nearly every
    # position: it goes over to memmem, and still finds every match.
    stream = (filler * 5000 + terminator) * 3 + filler * 100
    expected = stream.split(terminator)[:-1]
    assert split_by_framer(engine, stream, terminator) == expected
    assert split_by_framer(engine, stream, terminator, read_size=4096) == expected


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    terminator=st.binary(min_size=2, max_size=12),
    alphabet=st.lists(st.integers(0, 255), min_size=1, max_size=4),
    data=st.data(),
)
def test_engines_split_like_bytes(engine, terminator, alphabet, data):
    # A stream over a tiny alphabet with the terminator's own bytes in it:
    # partial and overlapping matches at random places.
    symbols = [bytes([b]) for b in alphabet] + [terminator[:k] for k in range(1, len(terminator) + 1)]
    stream = b"".join(data.draw(st.lists(st.sampled_from(symbols), max_size=150)))
    expected = stream.split(terminator)[:-1]
    assert split_by_framer(engine, stream, terminator) == expected
    read_size = data.draw(st.integers(1, 64))
    assert split_by_framer(engine, stream, terminator, read_size) == expected
