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

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport (
    PyBUF_FULL_RO, PyBuffer_IsContiguous, PyBuffer_Release, PyObject_GetBuffer,
)
from cpython.memoryview cimport PyMemoryView_FromObject, PyMemoryView_GET_BUFFER
from cpython.object cimport PyObject
from libc.string cimport memcmp, memcpy

cimport cython

from collections import deque

# The one rule for a limit value (shared with the twin); the fast paths below
# accept only what it accepts and hand everything else to it.
from chatcore.limits import check_limit
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
    /* First occurrence of needle in haystack, or NULL.  memmem is linear time
       in glibc, musl and the BSDs; Windows has no memmem, so it gets a
       memchr-and-compare loop there. */
    static const char *chatcore_find(const char *hay, Py_ssize_t hay_len,
                                     const char *needle, Py_ssize_t needle_len)
    {
        if (needle_len <= 0 || hay_len < needle_len) return NULL;
        if (needle_len == 1) return (const char *)memchr(hay, needle[0], (size_t)hay_len);
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
    """
    const char *chatcore_find(const char *hay, Py_ssize_t hay_len,
                              const char *needle, Py_ssize_t needle_len)

cdef extern from *:
    """
    /* dict.get(key, default) as a new reference, NULL with an exception set.
       PyDict_GetItemRef where it exists: a borrowed reference from a dict is
       not safe without the GIL (free-threaded builds). */
    static PyObject *chatcore_dict_get(PyObject *dict, PyObject *key, PyObject *fallback)
    {
    #if PY_VERSION_HEX >= 0x030D0000
        PyObject *value;
        int found = PyDict_GetItemRef(dict, key, &value);
        if (found < 0) return NULL;
        if (found) return value;
    #else
        PyObject *value = PyDict_GetItemWithError(dict, key);
        if (value != NULL) { Py_INCREF(value); return value; }
        if (PyErr_Occurred()) return NULL;
    #endif
        Py_INCREF(fallback);
        return fallback;
    }
    """
    object chatcore_dict_get(object dict, object key, object fallback)

cdef extern from "Python.h":
    ssize_t PY_SSIZE_T_MAX
    object PyObject_GenericGetDict(object obj, void *context)
    # Without Cython's exception check: _size_limit tests for overflow itself.
    Py_ssize_t _long_as_size "PyLong_AsSsize_t"(object value) noexcept
    PyObject *PyErr_Occurred() noexcept
    void PyErr_Clear() noexcept


# async_chat methods that legacy handlers call once or twice per message.
# Compiled, they skip a Python frame each; binding=True makes them bind to the
# channel like methods defined in the class.

@cython.binding(True)
def set_terminator(channel, term):
    """Set the input delimiter: bytes of any length, a byte count, or None."""
    if type(term) is bytes:
        channel.terminator = term
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


cdef inline object _piece(object data, const char *ptr, Py_ssize_t start, Py_ssize_t length):
    """Bytes for data[start:start + length]: the object itself when that is all of it."""
    if start == 0 and type(data) is bytes and length == PyBytes_GET_SIZE(data):
        return data
    return PyBytes_FromStringAndSize(ptr + start, length)


cdef int _append(bytearray message, const char *ptr, Py_ssize_t length) except -1:
    """message += ptr[:length], without an intermediate bytes object."""
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(message)
    if length <= 0:
        return 0
    PyByteArray_Resize(message, old + length)
    memcpy(PyByteArray_AS_STRING(message) + old, ptr, <size_t>length)
    return 0


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
    if type(max_size) is int:
        # The per-read case: no exception machinery unless it is negative.
        size = _long_as_size(max_size)
        if size >= 0:
            return size
        if size == -1 and PyErr_Occurred() != NULL:
            PyErr_Clear()
            if max_size > 0:
                return PY_SSIZE_T_MAX
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
    checked ``int`` or None in the instance's ``__dict__`` under *name*;
    ``del instance.<name>`` goes back to the default.  Reading is one dict
    lookup, cheap enough for the per-read path.
    """

    cdef readonly str name
    cdef readonly object default

    def __init__(self, name, default=None):
        if type(name) is not str:
            raise TypeError("SizeLimit name must be a str, not %s" % type(name).__name__)
        self.name = name
        self.default = check_limit(default, name)

    def __get__(self, instance, owner):
        if instance is None:
            return self.default
        return chatcore_dict_get(PyObject_GenericGetDict(instance, NULL), self.name, self.default)

    def __set__(self, instance, value):
        PyObject_GenericGetDict(instance, NULL)[self.name] = check_limit(value, self.name)

    def __delete__(self, instance):
        try:
            del PyObject_GenericGetDict(instance, NULL)[self.name]
        except KeyError:
            raise AttributeError(self.name) from None

    def __repr__(self):
        return "SizeLimit(%r, %r)" % (self.name, self.default)


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
    # Message mode only: the body so far of a message spanning reads and the
    # bytes an integer-framed message still needs.
    cdef bytearray _message
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

    def __cinit__(self):
        self._data = b""
        self._pos = 0
        self._feeding = 0
        self._message = bytearray()
        self._count_left = 0
        self._dropping = False
        self._collected = 0
        self._found_owed = False

    @property
    @cython.critical_section
    def pending(self):
        """Received bytes not yet handed to the channel (stdlib's ``ac_in_buffer``)."""
        cdef Py_ssize_t length
        cdef const char *ptr = _buffer_pointer(self._data, &length)
        if self._pos >= length:
            return b""
        return PyBytes_FromStringAndSize(ptr + self._pos, length - self._pos)

    @pending.setter
    @cython.critical_section
    def pending(self, value):
        self._data = bytes(memoryview(value))
        self._pos = 0
        self._found_owed = False

    @property
    def feeding(self):
        """True while ``feed`` is running (a handler callback re-entered it)."""
        return self._feeding > 0

    @cython.critical_section
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
        cdef Py_ssize_t limit = _size_limit(max_size)
        self._start(data)
        try:
            self._deliver(channel, call_get_terminator, limit)
        finally:
            self._finish()

    @cython.critical_section
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
        cdef Py_ssize_t limit = _size_limit(max_size)
        if limit < 0:
            limit = PY_SSIZE_T_MAX
        self._start(data)
        try:
            self._deliver_messages(channel, limit)
        finally:
            self._finish()

    cdef _start(self, object data):
        data = _own_view(data)
        if self._pos < len(self._data):
            data = self.pending + bytes(data)
        self._data = data
        self._pos = 0
        self._feeding += 1

    cdef _finish(self):
        self._feeding -= 1
        # Keep only the unprocessed rest, as an owned bytes object, so the
        # caller's receive buffer is free again.
        if self._pos or type(self._data) is not bytes:
            self._data = self.pending
            self._pos = 0

    cdef int _deliver(self, object channel, bint call_get_terminator, Py_ssize_t max_size) except -1:
        # max_size < 0: no limit.
        cdef object data, terminator, needle
        cdef const char *ptr
        cdef const char *found
        cdef const char *needle_ptr
        cdef Py_ssize_t pos, end, available, count, needle_len, index, partial, collected
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
                if terminator < 0:
                    raise ValueError("terminator must not be negative, got %d" % terminator)
                self._dropping = False
                try:
                    count = terminator
                except OverflowError:
                    count = PY_SSIZE_T_MAX
                if available < count:
                    self._pos = end
                    try:
                        channel.collect_incoming_data(_piece(data, ptr, pos, available))
                    finally:
                        # Handed over, so counted, even if the handler raised.
                        channel.terminator = channel.terminator - available
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
                    channel.found_terminator()
            else:
                needle = _terminator_bytes(terminator)
                needle_ptr = PyBytes_AS_STRING(needle)
                needle_len = PyBytes_GET_SIZE(needle)
                found = chatcore_find(ptr + pos, available, needle_ptr, needle_len)
                if found != NULL:
                    index = found - ptr
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
                            channel.collect_incoming_data(PyBytes_FromStringAndSize(ptr + pos, index - pos))
                            if self._data is data and self._pos == index:
                                self._pos = index + needle_len
                        channel.found_terminator()
                    continue
                partial = _partial_terminator_length(ptr + pos, available, needle_ptr, needle_len)
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
                    channel.collect_incoming_data(
                        PyBytes_FromStringAndSize(ptr + pos, available - partial))
                    return 0
                channel.collect_incoming_data(_piece(data, ptr, pos, available))


    cdef int _deliver_messages(self, object channel, Py_ssize_t max_size) except -1:
        cdef object data, terminator, needle
        cdef const char *ptr
        cdef const char *found
        cdef const char *needle_ptr
        cdef Py_ssize_t pos, end, available, count, needle_len, index, body_end, take
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
                self._complete(channel, data, ptr, pos, available, max_size)
            elif isinstance(terminator, int):
                if terminator < 0:
                    raise ValueError("terminator must not be negative, got %d" % terminator)
                if not self._count_left:
                    try:
                        count = terminator
                    except OverflowError:
                        count = PY_SSIZE_T_MAX
                    self._count_left = count
                    if count > max_size:
                        self._overflow(channel)
                        continue  # the handler may have replaced the buffer
                take = self._count_left if self._count_left < available else available
                self._pos = pos + take
                self._count_left -= take
                if self._count_left:
                    if not self._dropping:
                        _append(self._message, ptr + pos, take)
                elif self._dropping:
                    self._dropping = False
                else:
                    self._complete(channel, data, ptr, pos, take, max_size)
            else:
                needle = _terminator_bytes(terminator)
                needle_ptr = PyBytes_AS_STRING(needle)
                needle_len = PyBytes_GET_SIZE(needle)
                found = chatcore_find(ptr + pos, available, needle_ptr, needle_len)
                if found != NULL:
                    index = found - ptr
                    self._pos = index + needle_len
                    if self._dropping:
                        self._dropping = False
                        del self._message[:]
                    else:
                        self._complete(channel, data, ptr, pos, index - pos, max_size)
                    continue
                body_end = end - _partial_terminator_length(ptr + pos, available, needle_ptr, needle_len)
                self._pos = body_end
                if not self._dropping:
                    if PyByteArray_GET_SIZE(self._message) + body_end - pos > max_size:
                        self._overflow(channel)
                    else:
                        _append(self._message, ptr + pos, body_end - pos)
                return 0

    cdef int _complete(self, object channel, object data, const char *ptr, Py_ssize_t start,
                       Py_ssize_t length, Py_ssize_t max_size) except -1:
        """Hand over the message that ends with ptr[start:start + length], or report its overflow."""
        cdef bytearray message = self._message
        if PyByteArray_GET_SIZE(message) + length > max_size:
            self._overflow(channel)
            self._dropping = False  # the message has ended: nothing left to skip
            return 0
        if PyByteArray_GET_SIZE(message):
            _append(message, ptr + start, length)
            piece = bytes(message)
            del message[:]
        else:
            piece = _piece(data, ptr, start, length)
        channel.handle_message(piece)
        return 0

    cdef int _overflow(self, object channel) except -1:
        del self._message[:]
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
    ``handle_close()``.  A memoryview at the head (appended directly, or returned by
    a producer) is first normalised to its bytes, so the sizes counted are
    bytes (stdlib counts items there).
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


