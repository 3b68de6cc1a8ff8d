# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: freethreading_compatible=True
"""Compiled framing engine, the twin of ``chatcore._framing_py``.

Same names, signatures, errors and callback sequence as the pure-Python twin;
only the mechanism differs: the incoming search runs over a raw pointer into
the received buffer (memchr for one-byte terminators, memmem for longer ones),
and pieces are copied out exactly once, straight into the bytes object handed
to ``collect_incoming_data``.

Memory-safety rules this file keeps:
* a pointer into a buffer is used only while a local reference holds that
  buffer, and is re-derived after every call back into Python, because a
  handler may replace the framer's buffer (``ac_in_buffer = ...``) or feed it
  recursively;
* every offset is checked against the length of the buffer it indexes before
  use, so a state change from a callback cannot turn into an out-of-bounds read.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport (
    PyBUF_FULL_RO, PyBuffer_IsContiguous, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.memoryview cimport PyMemoryView_FromObject, PyMemoryView_GET_BUFFER
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_XDECREF
from libc.string cimport memcmp, memcpy, memset

cimport cython

from collections import deque
from sys import intern as _intern

# The one rule for a limit value (shared with the twin); the fast paths below
# accept only what it accepts and hand everything else to it.
from chatcore.limits import check_limit
from chatcore.terminators import check_terminators
from chatcore.outqueue import OutputQueue
from chatcore.events import DISCONNECTED
from errno import EWOULDBLOCK

# push() appends to chatcore's own producer_fifo with deque's own method.
_deque_append = deque.append

__all__ = [
    "Framer", "push", "initiate_send", "send_gathered",
    "set_terminator", "collect_incoming_piece", "join_incoming", "SizeLimit",
]

cdef extern from *:
    """
    #include <string.h>

    /* First occurrence of needle in haystack, or NULL, in linear time: memmem
       (glibc, musl, the BSDs); Windows has none, and gets a memchr-and-compare
       loop instead. */
    static const char *chatcore_memmem(const char *hay, Py_ssize_t hay_len,
                                       const char *needle, Py_ssize_t needle_len)
    {
        if (needle_len <= 0 || hay_len < needle_len) return NULL;
    #if defined(_WIN32)
        {
            const char *end = hay + (hay_len - needle_len) + 1;
            const char *p = hay;
            while (p < end) {
                p = (const char *)memchr(p, needle[0], (size_t)(end - p));
                if (p == NULL) return NULL;
                if (memcmp(p, needle, (size_t)needle_len) == 0) return p;
                p++;
            }
            return NULL;
        }
    #else
        return (const char *)memmem(hay, (size_t)hay_len, needle, (size_t)needle_len);
    #endif
    }

    /* How common a byte is in what protocols carry (text lines, headers,
       binary records): higher is more common.  Only the order matters. */
    static int chatcore_byte_rank(unsigned char c)
    {
        if (c == ' ' || c == 13 || c == 10 || (c >= 'a' && c <= 'z')) return 4;  /* CR, LF */
        if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 3;
        if (c == 9 || c == '.' || c == ',' || c == ':' || c == ';' || c == '-'
                || c == '=' || c == '/' || c == 0) return 2;
        if (c >= 0x20) return 1;
        return 0;  /* other control bytes */
    }

    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define CHATCORE_SSE2 1
    #if defined(_MSC_VER)
    #include <intrin.h>
    static int chatcore_lowest_bit(unsigned mask)
    {
        unsigned long index;
        _BitScanForward(&index, mask);
        return (int)index;
    }
    #else
    #define chatcore_lowest_bit(mask) __builtin_ctz(mask)
    #endif
    #endif

    /* First occurrence of needle in haystack, or NULL.

       A single byte is memchr.  For a longer needle two of its bytes are
       picked, the rarest by chatcore_byte_rank and, of the rest, the rarest
       and farthest from it; with SSE2 (every x86-64) 16 candidate positions
       at a time are tested for both, elsewhere memchr finds the first and the
       other is compared, and memcmp confirms a candidate.  Over text that is
       a fraction of an instruction a byte, where memmem (glibc's generic one)
       spends about three.  Where candidates turn out common (more than one
       false one per 8 bytes scanned, past the first 16), the rest goes to
       memmem, so the search stays linear whatever the data. */
    static const char *chatcore_find(const char *hay, Py_ssize_t hay_len,
                                     const char *needle, Py_ssize_t needle_len)
    {
        Py_ssize_t rare = 0, pair = -1, index, start, last, misses = 0;
        int rank, pair_rank = 0;
        if (needle_len <= 0 || hay_len < needle_len) return NULL;
        if (needle_len == 1) return (const char *)memchr(hay, needle[0], (size_t)hay_len);
        for (index = 1; index < needle_len; index++) {
            if (chatcore_byte_rank((unsigned char)needle[index])
                    < chatcore_byte_rank((unsigned char)needle[rare]))
                rare = index;
        }
        for (index = 0; index < needle_len; index++) {
            if (index == rare) continue;
            rank = chatcore_byte_rank((unsigned char)needle[index]);
            if (pair < 0 || rank < pair_rank || (rank == pair_rank
                    && (index > rare ? index - rare : rare - index)
                       > (pair > rare ? pair - rare : rare - pair))) {
                pair = index;
                pair_rank = rank;
            }
        }
        last = hay_len - needle_len;  /* the last position a match can start at */
        start = 0;
    #if defined(CHATCORE_SSE2)
        {
            /* Loads read hay[start + rare .. start + rare + 15] (and the same
               for pair): within the haystack while start + 15 <= last. */
            const __m128i want_rare = _mm_set1_epi8(needle[rare]);
            const __m128i want_pair = _mm_set1_epi8(needle[pair]);
            unsigned mask;
            while (start + 15 <= last) {
                mask = (unsigned)_mm_movemask_epi8(_mm_and_si128(
                    _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(hay + start + rare)), want_rare),
                    _mm_cmpeq_epi8(_mm_loadu_si128((const __m128i *)(hay + start + pair)), want_pair)));
                while (mask) {
                    index = start + chatcore_lowest_bit(mask);
                    if (memcmp(hay + index, needle, (size_t)needle_len) == 0) return hay + index;
                    if (++misses > 16 && misses * 8 > index)
                        return chatcore_memmem(hay + index + 1, hay_len - index - 1, needle, needle_len);
                    mask &= mask - 1;
                }
                start += 16;
            }
        }
    #endif
        while (start <= last) {
            const char *found = (const char *)memchr(hay + start + rare, needle[rare],
                                                     (size_t)(last - start) + 1);
            if (found == NULL) return NULL;
            index = found - rare - hay;
            if (hay[index + pair] == needle[pair]
                    && memcmp(hay + index, needle, (size_t)needle_len) == 0)
                return hay + index;
            if (++misses > 16 && misses * 8 > index)
                return chatcore_memmem(hay + index + 1, hay_len - index - 1, needle, needle_len);
            start = index + 1;
        }
        return NULL;
    }
    """
    const char *chatcore_find(const char *hay, Py_ssize_t hay_len,
                              const char *needle, Py_ssize_t needle_len)

cdef extern from *:
    """
    #if defined(__linux__)
    #include <sys/mman.h>
    #endif
    #include <stdint.h>

    /* Large buffers (a long message body, a joined message) are written once
       into fresh memory, and there the cost is the kernel's page faults, not
       the copy: 8,192 faults for 32 MiB of 4 KiB pages.  On Linux with
       transparent huge pages in "madvise" (or "always") mode, advising the
       2 MiB-aligned interior of such a buffer before it is touched takes 512
       times fewer faults.  The advice changes no content and no size; where
       it is refused or unsupported nothing happens. */
    #define CHATCORE_HUGE_PAGE ((uintptr_t)1 << 21)
    static void chatcore_advise_huge_pages(char *start, Py_ssize_t length)
    {
    #if defined(MADV_HUGEPAGE)
        uintptr_t begin = ((uintptr_t)start + CHATCORE_HUGE_PAGE - 1) & ~(CHATCORE_HUGE_PAGE - 1);
        uintptr_t end = ((uintptr_t)start + (uintptr_t)length) & ~(CHATCORE_HUGE_PAGE - 1);
        if (end > begin)
            (void)madvise((void *)begin, (size_t)(end - begin), MADV_HUGEPAGE);
    #else
        (void)start; (void)length;
    #endif
    }

    /* Resize a bytes object nobody else references (realloc: in place, or
       remapped without copying for a large one).  On failure *body is NULL
       and MemoryError is set, as _PyBytes_Resize leaves them. */
    static int chatcore_resize_bytes(PyObject **body, Py_ssize_t size)
    {
        return _PyBytes_Resize(body, size);
    }
    """
    void chatcore_advise_huge_pages(char *start, Py_ssize_t length) noexcept
    int chatcore_resize_bytes(PyObject **body, Py_ssize_t size) except -1

cdef extern from "Python.h":
    ssize_t PY_SSIZE_T_MAX
    object PyObject_GenericGetDict(object obj, void *context)
    # value NULL: delete.
    int PyObject_GenericSetAttr(object obj, object name, PyObject *value) except -1
    # Without Cython's exception check: _size_limit tests for overflow itself.
    Py_ssize_t _long_as_size "PyLong_AsSsize_t"(object value) noexcept
    PyObject *PyErr_Occurred() noexcept
    void PyErr_Clear() noexcept


# async_chat methods that legacy handlers call once or twice per message.
# Compiled, they skip a Python frame each; binding=True makes them bind to the
# channel like methods defined in the class.

@cython.binding(True)
def set_terminator(channel, term):
    """Set the input delimiter: bytes of any length, a tuple of them, a byte count, or None."""
    if type(term) is bytes:
        channel.terminator = term
        return
    if isinstance(term, tuple):
        # Checked (and bytes-like elements converted) once, here: a handler
        # that sets the same tuple again after every message pays nothing.
        if term is not getattr(channel, "terminator", None):
            channel.terminator = check_terminators(term)
        return
    if isinstance(term, str) and channel.use_encoding:
        term = bytes(term, channel.encoding)
    elif isinstance(term, int) and term < 0:
        raise ValueError("the number of received bytes must be positive")
    channel.terminator = term


@cython.binding(True)
def collect_incoming_piece(channel, data):
    """Keep *data* for ``join_incoming`` (stdlib's ``_collect_incoming_data``)."""
    channel.incoming.append(data)


@cython.binding(True)
def join_incoming(channel):
    """The pieces kept so far as one bytes object, and forget them (``_get_data``)."""
    incoming = channel.incoming
    if type(incoming) is list:
        data = _join(incoming)
    else:
        data = b"".join(incoming)
    del incoming[:]
    return data


cdef inline const char *_buffer_pointer(object buf, Py_ssize_t *length) except NULL:
    """Pointer and length of *buf*, which is bytes or a contiguous byte memoryview."""
    if type(buf) is bytes:
        length[0] = PyBytes_GET_SIZE(buf)
        return PyBytes_AS_STRING(buf)
    view = PyMemoryView_GET_BUFFER(buf)
    if view.buf == NULL and view.len != 0:
        raise ValueError("framer buffer was released")
    length[0] = view.len
    if view.buf == NULL:
        return b""
    return <const char *>view.buf


cdef object _own_view(object data):
    """A buffer the framer can index directly: bytes, or a private memoryview."""
    if type(data) is bytes:
        return data
    view = PyMemoryView_FromObject(data)
    info = PyMemoryView_GET_BUFFER(view)
    if info.itemsize != 1 or not view.c_contiguous:
        return bytes(view)
    return view


#: Buffers at least this large get the huge-page advice (see
#: chatcore_advise_huge_pages): two huge pages, so at least one aligned one
#: lies inside.
cdef Py_ssize_t _HUGE_PAGE_MIN = 4 << 20
#: An integer-framed message body up to this size is allocated whole when its
#: first piece arrives; a larger one grows by doubling up to its size, so an
#: announced size is never reserved ahead of the bytes that fill it.
cdef Py_ssize_t _RESERVE_MAX = 64 << 20


cdef object _new_bytes(Py_ssize_t size):
    """An unfilled bytes object of *size* bytes: the caller fills it before anyone sees it."""
    result = PyBytes_FromStringAndSize(NULL, size)
    if size >= _HUGE_PAGE_MIN:
        chatcore_advise_huge_pages(PyBytes_AS_STRING(result), size)
    return result


cdef inline object _copy(const char *ptr, Py_ssize_t length):
    """ptr[:length] as a new bytes object."""
    if length < _HUGE_PAGE_MIN:
        return PyBytes_FromStringAndSize(ptr, length)
    result = _new_bytes(length)
    memcpy(PyBytes_AS_STRING(result), ptr, <size_t>length)
    return result


cdef inline object _piece(object data, const char *ptr, Py_ssize_t start, Py_ssize_t length):
    """Bytes for data[start:start + length]: the object itself when that is all of it."""
    if start == 0 and type(data) is bytes and length == PyBytes_GET_SIZE(data):
        return data
    return _copy(ptr + start, length)


cdef object _join(list pieces):
    """``b"".join(pieces)``; a large result of bytes pieces gets huge-page advice."""
    cdef Py_ssize_t total = 0, offset = 0, size
    cdef tuple items
    if len(pieces) < 2:
        return b"".join(pieces)  # which gives a lone bytes piece itself
    for item in pieces:
        if type(item) is not bytes:
            return b"".join(pieces)
        total += PyBytes_GET_SIZE(item)
    if total < _HUGE_PAGE_MIN:
        return b"".join(pieces)
    # A snapshot holding the pieces, so the copy below sees what it sized.
    items = tuple(pieces)
    total = 0
    for item in items:
        if type(item) is not bytes:
            return b"".join(items)
        total += PyBytes_GET_SIZE(item)
    result = _new_bytes(total)
    for item in items:
        size = PyBytes_GET_SIZE(item)
        memcpy(PyBytes_AS_STRING(result) + offset, PyBytes_AS_STRING(item), <size_t>size)
        offset += size
    return result


cdef object _terminator_bytes(object terminator):
    if type(terminator) is bytes:
        return terminator
    try:
        return bytes(memoryview(terminator))
    except TypeError:
        raise TypeError(
            "terminator must be bytes-like, an int or None, not %r"
            % type(terminator).__name__
        ) from None


cdef Py_ssize_t _exact_size(object value) except -2:
    """An exact ``int`` >= 0 as a C size (PY_SSIZE_T_MAX for one larger); -1 for anything else."""
    cdef Py_ssize_t size
    if type(value) is not int:
        return -1
    size = _long_as_size(value)
    if size >= 0:
        return size
    if size == -1 and PyErr_Occurred() != NULL:
        PyErr_Clear()
        if value > 0:
            return PY_SSIZE_T_MAX
    return -1


cdef Py_ssize_t _count_of(object terminator) except -1:
    """An int terminator (already known to be one) as a byte count.

    Negative: ValueError.  Larger than any size: PY_SSIZE_T_MAX, as good as
    endless.  An exact int is converted without the exception machinery.
    """
    cdef Py_ssize_t count = _exact_size(terminator)
    if count >= 0:
        return count
    if terminator < 0:
        raise ValueError("terminator must not be negative, got %d" % terminator)
    try:
        return terminator
    except OverflowError:
        return PY_SSIZE_T_MAX


cdef inline object _minus(object value, Py_ssize_t amount):
    """``value - amount``: for an exact int count, without a temporary int."""
    cdef Py_ssize_t number
    if type(value) is int:
        number = _long_as_size(value)
        if number >= 0:
            return number - amount
        if number == -1 and PyErr_Occurred() != NULL:
            PyErr_Clear()
    return value - amount


cdef Py_ssize_t _partial_terminator_length(const char *data, Py_ssize_t available,
                                           const char *needle, Py_ssize_t needle_len) noexcept:
    cdef Py_ssize_t length = needle_len - 1
    if length > available:
        length = available
    while length > 0:
        if memcmp(data + available - length, needle, <size_t>length) == 0:
            return length
        length -= 1
    return 0


cdef inline Py_ssize_t _clamped_size(object value) noexcept:
    """An int >= 0 as a C size; one larger than memory is as good as no limit."""
    cdef Py_ssize_t size = _long_as_size(value)
    if size == -1 and PyErr_Occurred() != NULL:
        PyErr_Clear()
        return PY_SSIZE_T_MAX
    return size


cdef Py_ssize_t _size_limit(object max_size) except -2:
    """*max_size* as a C size, -1 for None (no limit)."""
    cdef Py_ssize_t size
    if max_size is None:
        return -1
    # The per-read case, an int: no exception machinery unless it is negative.
    size = _exact_size(max_size)
    if size >= 0:
        return size
    # Negative, or not an int: the shared rule decides (and words the error).
    max_size = check_limit(max_size, "max_size")
    if max_size is None:
        return -1
    return _clamped_size(max_size)


cdef class SizeLimit:
    """A channel attribute holding a size limit, checked when it is assigned.

    ``SizeLimit(name, default)`` in a class body makes ``instance.<name>``
    read the instance's own value, else *default* (also what the class
    reads).  Assigning checks the value with ``chatcore.limits.check_limit``
    (so a bad value fails at the assignment, with its name) and keeps the
    checked ``int`` or None on the instance as the plain attribute *key*
    (``_limit_<name>``), which the class holding the descriptor sets to
    *default* (``__set_name__``); ``del instance.<name>`` goes back to the
    default.  Nothing asks for the instance's ``__dict__`` (on Python 3.11
    an object whose ``__dict__`` has been asked for is slower at every
    attribute access from then on).  Reading is one attribute lookup, cheap
    enough for the per-read path.
    """

    cdef readonly str name
    cdef readonly object default
    cdef readonly str key

    def __init__(self, name, default=None):
        if type(name) is not str:
            raise TypeError("SizeLimit name must be a str, not %s" % type(name).__name__)
        self.name = name
        self.default = check_limit(default, name)
        self.key = _intern("_limit_" + name)

    def __set_name__(self, owner, name):
        setattr(owner, self.key, self.default)

    def __get__(self, instance, owner):
        if instance is None:
            return self.default
        return getattr(instance, self.key, self.default)

    def __set__(self, instance, value):
        checked = check_limit(value, self.name)
        PyObject_GenericSetAttr(instance, self.key, <PyObject *>checked)

    def __delete__(self, instance):
        try:
            PyObject_GenericSetAttr(instance, self.key, NULL)
        except AttributeError:
            raise AttributeError(self.name) from None

    def __repr__(self):
        return "SizeLimit(%r, %r)" % (self.name, self.default)

# _TerminatorSet.found: not searched in the current buffer yet.
cdef enum:
    _UNSEARCHED = -2


cdef class _TerminatorSet:
    """A tuple terminator, prepared once: its bytes, and where each of them next matches.

    The twin's ``_TerminatorSet``, step for step: ``next_message_end``
    finds the earliest match at or after a position (the longest of those
    starting there); each terminator's own next match, or "none up to the
    end of the buffer", is remembered and reused until the position passes
    it, so a buffer is searched once per terminator, never once per message.
    """

    cdef object source         # the tuple as the channel holds it
    cdef tuple terminators     # its bytes (check_terminators), which own the pointers below
    cdef Py_ssize_t count
    cdef Py_ssize_t longest
    cdef const char **pointers
    cdef Py_ssize_t *lengths
    # Per terminator: its first match at or after the position it was last
    # searched from, -1 for none up to the end of the buffer, _UNSEARCHED
    # for not searched in this buffer (the framer's generation) yet.
    cdef Py_ssize_t *found
    cdef unsigned long long generation
    cdef Py_ssize_t matched    # which terminator next_message_end found last
    cdef unsigned char first_bytes[256]
    # Bytes the searches have covered so far (each from its start to its
    # match, or to the end): what the tests check stays linear.
    cdef readonly unsigned long long searched_bytes

    def __cinit__(self, source):
        cdef Py_ssize_t index, length
        self.pointers = NULL
        self.lengths = NULL
        terminators = check_terminators(source)
        self.source = source
        self.terminators = terminators
        self.count = len(terminators)
        self.pointers = <const char **>PyMem_Malloc(self.count * sizeof(const char *))
        self.lengths = <Py_ssize_t *>PyMem_Malloc(2 * self.count * sizeof(Py_ssize_t))
        if self.pointers == NULL or self.lengths == NULL:
            raise MemoryError()
        self.found = self.lengths + self.count
        memset(self.first_bytes, 0, sizeof(self.first_bytes))
        self.longest = 0
        self.generation = 0
        self.matched = 0
        self.searched_bytes = 0
        for index in range(self.count):
            terminator = terminators[index]
            length = PyBytes_GET_SIZE(terminator)
            self.pointers[index] = PyBytes_AS_STRING(terminator)
            self.lengths[index] = length
            if length > self.longest:
                self.longest = length
            self.first_bytes[<unsigned char>self.pointers[index][0]] = 1
            self.found[index] = _UNSEARCHED

    def __dealloc__(self):
        PyMem_Free(self.pointers)
        PyMem_Free(self.lengths)

    cdef Py_ssize_t next_message_end(self, const char *ptr, Py_ssize_t pos, Py_ssize_t end,
                                     unsigned long long generation, Py_ssize_t *held) noexcept:
        """Start of the terminator ending the message at *pos* (``matched``), or -1 (then *held*).

        A match is taken only where no terminator that could still complete
        in the next read starts at or before it; otherwise *held* is how
        many bytes at the end wait for the next read.
        """
        cdef Py_ssize_t index, at, best = -1, best_length = 0, partial
        cdef const char *hit
        if generation != self.generation:
            self.generation = generation
            for index in range(self.count):
                self.found[index] = _UNSEARCHED
        for index in range(self.count):
            at = self.found[index]
            if at < pos and at != -1:
                hit = chatcore_find(ptr + pos, end - pos, self.pointers[index], self.lengths[index])
                at = -1 if hit == NULL else hit - ptr
                self.found[index] = at
                self.searched_bytes += (end if at < 0 else at + self.lengths[index]) - pos
            if at >= 0 and (best < 0 or at < best or (at == best and self.lengths[index] > best_length)):
                best = at
                best_length = self.lengths[index]
                self.matched = index
        if best >= 0 and best + self.longest <= end:
            return best  # no terminator can still start at or before it
        partial = self.partial_length(ptr + pos, end - pos)
        if 0 <= best < end - partial:
            return best
        held[0] = partial
        return -1

    cdef Py_ssize_t partial_length(self, const char *data, Py_ssize_t available) noexcept:
        """Length of the longest end of data[:available] that is a proper prefix of a terminator."""
        cdef Py_ssize_t start = available - self.longest + 1, index, length, which
        if start < 0:
            start = 0
        # The earliest start is the longest suffix.
        for index in range(start, available):
            if self.first_bytes[<unsigned char>data[index]]:
                length = available - index
                for which in range(self.count):
                    if self.lengths[which] > length and memcmp(
                            data + index, self.pointers[which], <size_t>length) == 0:
                        return length
        return 0


cdef class Framer:
    """Incoming terminator engine for one channel.

    Between calls to ``feed`` the framer keeps only what stdlib keeps in
    ``ac_in_buffer``: a partial terminator at the end of the last read (or
    whatever the application stored through ``pending``).  During ``feed`` the
    unprocessed rest is visible and replaceable through ``pending`` too, so a
    handler that clears ``ac_in_buffer`` or calls ``discard_buffers()`` inside
    ``found_terminator()`` stops the processing as it would in stdlib.
    """

    # Without the GIL (free-threaded builds) the methods touching this state
    # hold the object's critical section: two threads feeding one channel then
    # interleave between callbacks, as under the GIL, never inside a memcpy.
    cdef object _data      # bytes, or a private C-contiguous byte memoryview
    cdef Py_ssize_t _pos   # first unprocessed byte of _data
    cdef int _feeding
    # Message mode only: the body so far of a message spanning reads, in a
    # bytes object only the framer references (so it is filled and resized in
    # place, and handed over as it is when complete), or NULL; the bytes of it
    # filled; and the bytes an integer-framed message still needs.
    cdef PyObject *_body
    cdef Py_ssize_t _body_len
    cdef Py_ssize_t _count_left
    # Both modes: whether the current message overflowed and is being
    # skipped.  Collect mode: bytes of it handed over so far.
    cdef bint _dropping
    cdef Py_ssize_t _collected
    # Collect mode: the piece completing an integer-framed message was handed
    # over but collect_incoming_data() raised, so found_terminator() is still
    # due; it runs first thing in the next feed.  Like a bytes terminator kept
    # in ``pending``, replacing ``pending`` drops it.
    cdef bint _found_owed
    # A tuple terminator: the last one seen, prepared.  Its remembered match
    # positions index _data, and hold while _generation (counting every new
    # _data) is unchanged.
    cdef readonly _TerminatorSet _terminators
    cdef unsigned long long _generation
    # Whether channel.matched_terminator was set (a tuple matched), so that a
    # message ended by anything else sets it back to None.
    cdef bint _matched_set

    def __cinit__(self):
        self._data = b""
        self._pos = 0
        self._feeding = 0
        self._body = NULL
        self._body_len = 0
        self._count_left = 0
        self._dropping = False
        self._collected = 0
        self._found_owed = False
        self._terminators = None
        self._generation = 0
        self._matched_set = False

    def __dealloc__(self):
        Py_XDECREF(self._body)
        self._body = NULL

    @property
    @cython.critical_section
    def pending(self):
        """Received bytes not yet handed to the channel (stdlib's ``ac_in_buffer``)."""
        return self._rest()

    @pending.setter
    @cython.critical_section
    def pending(self, value):
        self._data = bytes(memoryview(value))
        self._pos = 0
        self._generation += 1
        self._found_owed = False

    @property
    def feeding(self):
        """True while ``feed`` is running (a handler callback re-entered it)."""
        return self._feeding > 0

    def feed(self, channel, data, bint call_get_terminator=True, max_size=None):
        """Append *data* to the pending bytes and deliver every complete piece.

        Calls ``channel.collect_incoming_data(bytes)`` and
        ``channel.found_terminator()`` as stdlib does, reading the terminator
        again before each step because a handler may change it.  With
        *call_get_terminator* false the terminator is read straight from
        ``channel.terminator`` (only correct when ``get_terminator`` is not
        overridden).  An exception from a callback propagates; bytes already
        handed to a callback count as consumed, so nothing is delivered twice.

        *max_size* (None: no limit; else an int >= 0, see
        ``chatcore.limits``) bounds a message framed by a bytes
        terminator: before a piece would take it past *max_size* bytes, the
        framer calls ``channel.handle_message_overflow()`` once instead,
        skips the message's remaining bytes up to and including its
        terminator, and does not call ``found_terminator()`` for it.

        A piece of an integer-framed message counts the terminator down by
        its length after ``collect_incoming_data`` returns, or raises (the
        handler reads the count before the piece there, as in stdlib).  If
        the piece completing the message raises, the terminator is 0 and
        ``found_terminator()`` runs at the start of the next feed.
        """
        self.feed_c(channel, data, call_get_terminator, max_size)

    def feed_messages(self, channel, data, max_size):
        """Message mode: hand each complete message to ``channel.handle_message``.

        One ``bytes`` per message, terminator excluded, instead of pieces to
        ``collect_incoming_data`` plus ``found_terminator``.  The terminator is
        read from ``channel.terminator`` before each message: bytes frame up
        to the next occurrence, an int frames messages of exactly that many
        bytes (it is not counted down), None/0/b"" makes each read one message.
        A message longer than *max_size* (None: no limit) is never held: the
        framer calls ``channel.handle_message_overflow()`` once, drops the
        message's bytes up to its end, and goes on with the next message.
        """
        self.feed_messages_c(channel, data, max_size)

    # feed and feed_messages for C callers (the compiled handle_read in
    # _framing_io.pxi): the same steps, without a Python-level call.

    cdef int feed_c(self, object channel, object data, bint call_get_terminator,
                    object max_size) except -1:
        cdef Py_ssize_t limit = _size_limit(max_size)
        with cython.critical_section(self):
            self._start(data)
            try:
                self._deliver(channel, call_get_terminator, limit)
            finally:
                self._finish()
        return 0

    cdef int feed_messages_c(self, object channel, object data, object max_size) except -1:
        cdef Py_ssize_t limit = _size_limit(max_size)
        if limit < 0:
            limit = PY_SSIZE_T_MAX
        with cython.critical_section(self):
            self._start(data)
            try:
                self._deliver_messages(channel, limit)
            finally:
                self._finish()
        return 0

    cdef object _rest(self):
        """The unprocessed bytes (``pending``) as a bytes object."""
        cdef Py_ssize_t length
        cdef const char *ptr = _buffer_pointer(self._data, &length)
        if self._pos >= length:
            return b""
        if self._pos == 0 and type(self._data) is bytes:
            return self._data
        return _copy(ptr + self._pos, length - self._pos)

    cdef _start(self, object data):
        cdef Py_ssize_t length
        data = _own_view(data)
        _buffer_pointer(self._data, &length)
        if self._pos < length:
            data = self._rest() + bytes(data)
        self._data = data
        self._pos = 0
        self._generation += 1
        self._feeding += 1

    cdef _finish(self):
        self._feeding -= 1
        # Keep only the unprocessed rest, as an owned bytes object, so the
        # caller's receive buffer is free again.
        if self._pos or type(self._data) is not bytes:
            self._data = self._rest()
            self._pos = 0
            self._generation += 1

    cdef int _deliver(self, object channel, bint call_get_terminator, Py_ssize_t max_size) except -1:
        # max_size < 0: no limit.
        cdef object data, terminator
        cdef const char *ptr
        cdef Py_ssize_t pos, end, available, count, needle_len, index, collected, partial = 0
        if self._found_owed:
            self._found_owed = False
            channel.found_terminator()
        while True:
            # A callback may have replaced the buffer: re-derive everything.
            data = self._data
            ptr = _buffer_pointer(data, &end)
            pos = self._pos
            if pos >= end:
                return 0
            if pos < 0:
                raise RuntimeError("framer offset is out of range")
            available = end - pos
            if call_get_terminator:
                terminator = channel.get_terminator()
            else:
                terminator = channel.terminator
            if terminator is None or not terminator:
                self._dropping = False
                self._pos = end
                channel.collect_incoming_data(_piece(data, ptr, pos, available))
            elif isinstance(terminator, int):
                count = _count_of(terminator)
                self._dropping = False
                if available < count:
                    self._pos = end
                    try:
                        channel.collect_incoming_data(_piece(data, ptr, pos, available))
                    finally:
                        # Handed over, so counted, even if the handler raised.
                        channel.terminator = _minus(channel.terminator, available)
                else:
                    self._pos = pos + count
                    try:
                        channel.collect_incoming_data(_piece(data, ptr, pos, count))
                    except BaseException:
                        # The message is complete: its found_terminator()
                        # is owed to the next feed.
                        channel.terminator = 0
                        self._collected = 0
                        self._found_owed = True
                        raise
                    channel.terminator = 0
                    self._collected = 0
                    if self._matched_set:
                        self._forget_match(channel)
                    channel.found_terminator()
            else:
                index = self._message_end(channel, terminator, ptr, pos, end, &needle_len, &partial)
                if index >= 0:
                    self._pos = index + needle_len
                    collected = self._collected
                    self._collected = 0
                    if self._dropping:
                        self._dropping = False
                    elif max_size >= 0 and index - pos > max_size - collected:
                        # The message has ended: nothing left to skip.
                        channel.handle_message_overflow()
                    else:
                        if index > pos:
                            # The piece counts as consumed, its terminator not
                            # yet: if the handler raises, the message boundary
                            # stays for the next read.
                            self._pos = index
                            channel.collect_incoming_data(_copy(ptr + pos, index - pos))
                            if self._data is data and self._pos == index:
                                self._pos = index + needle_len
                        channel.found_terminator()
                    continue
                if partial == available:
                    return 0
                self._pos = end - partial
                if self._dropping:
                    return 0
                if max_size >= 0 and available - partial > max_size - self._collected:
                    self._dropping = True
                    self._collected = 0
                    channel.handle_message_overflow()
                    continue  # the handler may have replaced the buffer
                self._collected += available - partial
                if partial:
                    channel.collect_incoming_data(_copy(ptr + pos, available - partial))
                    return 0
                channel.collect_incoming_data(_piece(data, ptr, pos, available))

    cdef int _deliver_messages(self, object channel, Py_ssize_t max_size) except -1:
        cdef object data, terminator
        cdef const char *ptr
        cdef Py_ssize_t pos, end, available, count, needle_len, index, body_end, take, partial = 0
        while True:
            data = self._data
            ptr = _buffer_pointer(data, &end)
            pos = self._pos
            if pos >= end:
                return 0
            if pos < 0:
                raise RuntimeError("framer offset is out of range")
            available = end - pos
            terminator = channel.terminator
            if terminator is None or not terminator:
                self._pos = end
                if self._matched_set:
                    self._forget_match(channel)
                self._complete(channel, data, ptr, pos, available, max_size)
            elif isinstance(terminator, int):
                count = _count_of(terminator)  # checked at every step, as in the twin
                if not self._count_left:
                    self._count_left = count
                    if count > max_size:
                        self._overflow(channel)
                        continue  # the handler may have replaced the buffer
                take = self._count_left if self._count_left < available else available
                self._pos = pos + take
                self._count_left -= take
                if self._count_left:
                    if not self._dropping:
                        # The message's size is known: its body is reserved
                        # whole (up to _RESERVE_MAX) and filled read by read.
                        self._add_to_body(ptr + pos, take, self._body_len + take + self._count_left, True)
                elif self._dropping:
                    self._dropping = False
                else:
                    if self._matched_set:
                        self._forget_match(channel)
                    self._complete(channel, data, ptr, pos, take, max_size)
            else:
                index = self._message_end(channel, terminator, ptr, pos, end, &needle_len, &partial)
                if index >= 0:
                    self._pos = index + needle_len
                    if self._dropping:
                        self._dropping = False
                        self._drop_body()
                    else:
                        self._complete(channel, data, ptr, pos, index - pos, max_size)
                    continue
                body_end = end - partial
                self._pos = body_end
                if not self._dropping:
                    if self._body_len + body_end - pos > max_size:
                        self._overflow(channel)
                    else:
                        # Unknown size: the body grows by doubling, never
                        # past the limit.
                        self._add_to_body(ptr + pos, body_end - pos, max_size, False)
                return 0

    @cython.final
    cdef inline Py_ssize_t _message_end(self, object channel, object terminator, const char *ptr,
                                        Py_ssize_t pos, Py_ssize_t end, Py_ssize_t *match_length,
                                        Py_ssize_t *held) except -2:
        """Start of the sequence terminator ending the message at *pos*, or -1.

        Found: *match_length* is the terminator's length; not found: *held*
        is how many bytes at the end must wait for the next read (they may
        start a terminator).
        """
        cdef const char *found
        cdef Py_ssize_t needle_len
        if type(terminator) is bytes or not isinstance(terminator, tuple):
            needle = _terminator_bytes(terminator)
            needle_len = PyBytes_GET_SIZE(needle)
            found = chatcore_find(ptr + pos, end - pos, PyBytes_AS_STRING(needle), needle_len)
            if found == NULL:
                held[0] = _partial_terminator_length(ptr + pos, end - pos, PyBytes_AS_STRING(needle), needle_len)
                return -1
            match_length[0] = needle_len
            if self._matched_set:
                self._forget_match(channel)
            return found - ptr
        return self._sequence_match(channel, terminator, ptr, pos, end, match_length, held)

    cdef Py_ssize_t _sequence_match(self, object channel, object terminator, const char *ptr,
                                    Py_ssize_t pos, Py_ssize_t end, Py_ssize_t *match_length,
                                    Py_ssize_t *held) except -2:
        """A tuple terminator: start of the one ending the message at *pos*, or -1.

        Found: *match_length* is its length and ``channel.matched_terminator``
        the terminator itself; not found: *held* is how many bytes at the
        end must wait for the next read.
        """
        cdef _TerminatorSet terminators = self._terminators
        cdef Py_ssize_t index
        if terminators is None or terminators.source is not terminator:
            terminators = _TerminatorSet(terminator)
            self._terminators = terminators
        index = terminators.next_message_end(ptr, pos, end, self._generation, held)
        if index < 0:
            return -1
        match_length[0] = terminators.lengths[terminators.matched]
        channel.matched_terminator = terminators.terminators[terminators.matched]
        self._matched_set = True
        return index

    cdef int _forget_match(self, object channel) except -1:
        """A message ended by a single terminator, a count or a read: no tuple element matched."""
        self._matched_set = False
        channel.matched_terminator = None
        return 0

    cdef int _add_to_body(self, const char *ptr, Py_ssize_t length, Py_ssize_t ceiling,
                          bint exact) except -1:
        """Append ptr[:length] to the message body, which will hold at most *ceiling* bytes.

        *exact*: the message will be exactly *ceiling* bytes long, so its
        body is allocated at that size at once (up to ``_RESERVE_MAX``).
        """
        cdef Py_ssize_t needed, capacity
        if length <= 0:
            return 0
        needed = self._body_len + length
        if self._body == NULL or PyBytes_GET_SIZE(<object>self._body) < needed:
            if exact and ceiling <= _RESERVE_MAX:
                capacity = ceiling
            elif needed > ceiling // 2:
                capacity = ceiling
            else:
                capacity = 2 * needed
            if capacity < needed:
                capacity = needed
            if self._body == NULL:
                body = _new_bytes(capacity)
                self._body = <PyObject *>body
                Py_INCREF(body)
            else:
                chatcore_resize_bytes(&self._body, capacity)  # sets NULL on failure
                if capacity >= _HUGE_PAGE_MIN:
                    chatcore_advise_huge_pages(PyBytes_AS_STRING(<object>self._body), capacity)
        memcpy(PyBytes_AS_STRING(<object>self._body) + self._body_len, ptr, <size_t>length)
        self._body_len = needed
        return 0

    cdef object _take_body(self):
        """The message body, sized to what it holds; the framer forgets it."""
        cdef Py_ssize_t length = self._body_len
        self._body_len = 0
        if PyBytes_GET_SIZE(<object>self._body) != length:
            chatcore_resize_bytes(&self._body, length)  # sets NULL on failure
        body = <object>self._body  # a new reference ...
        Py_XDECREF(self._body)     # ... replacing the framer's own
        self._body = NULL
        return body

    cdef void _drop_body(self) noexcept:
        cdef PyObject *body = self._body
        self._body = NULL
        self._body_len = 0
        Py_XDECREF(body)

    cdef int _complete(self, object channel, object data, const char *ptr, Py_ssize_t start,
                       Py_ssize_t length, Py_ssize_t max_size) except -1:
        """Hand over the message that ends with ptr[start:start + length], or report its overflow."""
        if self._body_len + length > max_size:
            self._overflow(channel)
            self._dropping = False  # the message has ended: nothing left to skip
            return 0
        if self._body_len:
            self._add_to_body(ptr + start, length, self._body_len + length, True)
            piece = self._take_body()
        else:
            piece = _piece(data, ptr, start, length)
        channel.handle_message(piece)
        return 0

    cdef int _overflow(self, object channel) except -1:
        self._drop_body()
        self._dropping = True
        channel.handle_message_overflow()
        return 0


cdef object _byte_view(object view):
    """*view* (a memoryview) as a flat view of unsigned bytes, or a bytes copy of it.

    ``len()`` and slices of a memoryview count items, which are not bytes
    for a typed view (``memoryview(array('i', ...))``); the outgoing queue
    counts bytes, so every memoryview is normalised where it enters it.  A
    plain byte view is kept (zero-copy); a C-contiguous one of any format
    or shape is cast to 'B' (still zero-copy); the rest (strided, or a shape
    ``cast`` refuses) is copied once, in C order.
    """
    cdef Py_buffer info
    cdef bint plain, contiguous
    # Raises ValueError for a released view, as the twin's .format does.
    PyObject_GetBuffer(view, &info, PyBUF_FULL_RO)
    plain = (
        info.ndim == 1 and info.itemsize == 1 and info.suboffsets == NULL
        and (info.strides == NULL or info.strides[0] == 1)
        and (info.format == NULL or (info.format[0] == b'B' and info.format[1] == 0))
    )
    contiguous = PyBuffer_IsContiguous(&info, b'C')
    PyBuffer_Release(&info)
    if plain:
        return view
    if contiguous:
        try:
            return view.cast("B")
        except TypeError:  # e.g. a shape with zeros
            pass
    return bytes(view)


def push(channel, data):
    """Queue *data* on ``channel.producer_fifo`` in ``ac_out_buffer_size`` pieces."""
    cdef Py_ssize_t size, piece, start
    if type(data) is not bytes:
        if type(data) is memoryview:
            data = _byte_view(data)
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(
                "push() takes bytes, bytearray or memoryview, not %r" % type(data).__name__
            )
    fifo = channel.producer_fifo
    piece = channel.ac_out_buffer_size
    size = len(data)
    if type(fifo) is OutputQueue:
        # chatcore's own queue: deque's append, past the Python-level one
        # that reports additions made behind push()'s back (push() reports
        # its own).
        if size <= piece:
            _deque_append(fifo, data)
            return
        for start in range(0, size, piece):
            _deque_append(fifo, data[start:start + piece])
    elif size <= piece:
        fifo.append(data)
    else:
        for start in range(0, size, piece):
            fifo.append(data[start:start + piece])


def initiate_send(channel, bint zero_copy=False):
    """Send from the head of ``channel.producer_fifo`` once, as stdlib does.

    Stdlib's steps, kept because applications observe them: empty buffers are
    dropped (and end this call with an empty ``send``), ``None`` closes the
    channel, producers are asked ``more()`` until one yields data, and at most
    one ``send`` of at most ``ac_out_buffer_size`` bytes is made.  With
    *zero_copy* (only when ``channel.send`` is not overridden, so nobody sees
    the difference) an immutable head is sliced through a memoryview instead
    of copied, and ``dispatcher.send``'s steps are taken here, without its
    frame: the socket's ``send``, EWOULDBLOCK as 0 bytes sent, a peer gone as
    ``handle_close()``.  A memoryview at the head (appended directly, or
    returned by a producer) is first normalised to its bytes, so the sizes
    counted are bytes (stdlib counts items there).
    """
    fifo = channel.producer_fifo
    while fifo and channel.connected:
        first = fifo[0]
        if type(first) is memoryview:
            normal = _byte_view(first)
            if normal is not first:
                fifo[0] = first = normal
        if not first:
            del fifo[0]
            if first is None:
                channel.handle_close()
                return
        limit = channel.ac_out_buffer_size
        if zero_copy and type(first) is bytes:
            if PyBytes_GET_SIZE(first) <= limit:
                # first[:limit] would be first itself.
                data = first
            else:
                first = memoryview(first)
                data = first[:limit]
        else:
            try:
                data = first[:limit]
            except TypeError:
                data = _NOT_SLICEABLE
        if data is _NOT_SLICEABLE:
            data = first.more()
            if type(data) is memoryview:
                data = _byte_view(data)
            if data:
                fifo.appendleft(data)
            else:
                del fifo[0]
            continue
        if isinstance(data, str) and channel.use_encoding:
            data = bytes(data, channel.encoding)
        try:
            if zero_copy:
                sent = _dispatcher_send(channel, data)
            else:
                sent = channel.send(data)
        except OSError:
            channel.handle_error()
            return
        if sent:
            if sent < len(data) or limit < len(first):
                if zero_copy and type(first) is bytes:
                    # The rest of a head sent whole: a view, not a copy.
                    fifo[0] = memoryview(first)[sent:]
                else:
                    fifo[0] = first[sent:]
            else:
                del fifo[0]
        return


#: Most buffers one gathered send takes: below every platform's IOV_MAX.
GATHER_LIMIT = 512


def send_gathered(fifo, sendmsg, Py_ssize_t max_bytes):
    """Send the plain buffers at the head of *fifo* in one ``sendmsg`` call.

    Gathers bytes, bytearray and memoryview entries (stopping at ``None``, a
    producer, *max_bytes* or ``GATHER_LIMIT`` buffers), calls
    ``sendmsg(buffers)`` once and removes what it sent from *fifo*; the unsent
    rest of a bytes or memoryview head is left as a memoryview slice, of a
    bytearray as a copy (it may be mutated or resized by its owner later).
    Memoryviews are gathered as their bytes (see ``initiate_send``), and a
    normalised one that stays queued replaces its original.  Returns how
    many of the gathered bytes were not sent (0: all of them went, so the
    caller may gather again); exceptions from *sendmsg* propagate with
    *fifo* untouched.
    """
    cdef list buffers = []
    cdef Py_ssize_t total = 0, sent, remaining, size, index, offset, count
    cdef bint normalised = False
    for item in fifo:
        if type(item) is bytes:
            total += PyBytes_GET_SIZE(item)
        elif type(item) is memoryview:
            normal = _byte_view(item)
            if normal is not item:
                item = normal
                normalised = True
            total += len(item)
        elif isinstance(item, (bytes, bytearray)):
            total += len(item)
        else:
            break
        buffers.append(item)
        if total >= max_bytes or len(buffers) >= GATHER_LIMIT:
            break
    count = len(buffers)
    if not count:
        return 0
    sent = sendmsg(buffers)
    remaining = sent
    index = 0
    while index < count:
        size = len(buffers[index])
        if remaining < size:
            break
        fifo.popleft()
        remaining -= size
        index += 1
    if index == count:
        return 0
    # buffers[index:] are at the head of fifo now.
    if normalised:
        # Queue the normalised views, so none is normalised (or copied) again
        # by the next send.
        for offset in range(count - index):
            fifo[offset] = buffers[index + offset]
    if remaining:
        head = buffers[index]
        if type(head) is bytearray:
            fifo[0] = head[remaining:]
        else:
            fifo[0] = memoryview(head)[remaining:]
    return total - sent


# The per-event steps of async_chat (they use push and initiate_send above).
include "_framing_io.pxi"
_NOT_SLICEABLE = object()


cdef object _dispatcher_send(object channel, object data):
    """``dispatcher.send``, in line: only for channels that do not override it."""
    try:
        return channel.socket.send(data)
    except OSError as err:
        if err.errno == EWOULDBLOCK:
            return 0
        if err.errno in DISCONNECTED:
            channel.handle_close()
            return 0
        raise
