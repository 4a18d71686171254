"""Buffer files: one pickle and its out-of-band buffers (pickle protocol 5) in a spool file, read by mmap.

Large values move between a weave and its jobs as files, never as base64. Pickled with protocol 5 and a
``buffer_callback``, a numpy array, a ``bytearray`` or a ``pickle.PickleBuffer`` is not copied into the
pickle: its memory is handed to ``os.write`` as it is (``chunks``). The reader maps the file copy-on-write
and gives ``pickle.loads`` views of the mapping (``load``), so a 200 MB array is not copied on either side
and comes back writable. (``bytes`` and ``str`` are always pickled in-band; they cost one copy each way.)

Layout, all integers little-endian u64::

    b"WOVEBUF1" | main pickle length | buffer count | (offset, length) per buffer | main pickle | buffers

Each buffer starts at an offset aligned to 64 bytes (numpy wants aligned memory). The file says nothing
about trust: readers open it with ``spool.open_private`` (this user's alone), and a result's SHA-256 is
signed in its event and checked before ``load``.

Imported by jobs only when a large value is met: only ``os``, ``struct`` and (on read) ``mmap`` here.
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Optional

MAGIC = b"WOVEBUF1"
_HEAD = struct.Struct("<8sQQ")
_ENTRY = struct.Struct("<QQ")
ALIGN = 64
_ZEROS = bytes(ALIGN)
#: A value whose pickle and buffers together are at most this large travels inline (base64 in JSON).
INLINE_BYTES = 64 * 1024


class BufferFileError(ValueError):
    """A buffer file whose header does not describe it (truncated, or not a buffer file at all)."""


def dumps(value: Any, dump: Callable[..., bytes]) -> tuple[bytes, list[memoryview]]:
    """``value`` as (main pickle, out-of-band buffers); ``dump(value, buffer_callback=...)`` pickles it."""
    buffers: list[Any] = []
    main = dump(value, buffer_callback=buffers.append)
    return main, [buffer.raw() for buffer in buffers]


def size(main: bytes, buffers: list[memoryview]) -> int:
    """The pickle's size plus its buffers' (what the value costs to move, before the file's header)."""
    return len(main) + sum(view.nbytes for view in buffers)


def chunks(main: bytes, buffers: list[memoryview]) -> list[Any]:
    """The file's contents as a list of buffers to write in turn (nothing is joined or copied)."""
    offset = _HEAD.size + _ENTRY.size * len(buffers) + len(main)
    table, body = [], []
    for view in buffers:
        pad = -offset % ALIGN
        if pad:
            body.append(_ZEROS[:pad])
            offset += pad
        table.append(_ENTRY.pack(offset, view.nbytes))
        body.append(view)
        offset += view.nbytes
    return [_HEAD.pack(MAGIC, len(main), len(buffers)), *table, main, *body]


def is_buffer_file(head: bytes) -> bool:
    return head[:len(MAGIC)] == MAGIC


def mapped(fd: int, path: str) -> memoryview:
    """A copy-on-write map of the open file ``fd`` (its pages are read as they are used)."""
    import mmap

    length = os.fstat(fd).st_size
    if length < _HEAD.size:
        raise BufferFileError(f"{path} is truncated ({length} bytes, a buffer file has at least {_HEAD.size})")
    return memoryview(mmap.mmap(fd, length, access=mmap.ACCESS_COPY))


def parts(view: memoryview, path: str) -> tuple[memoryview, list[memoryview]]:
    """The main pickle and the buffers in a mapped buffer file (views, no copies)."""
    magic, main_length, count = _HEAD.unpack_from(view)
    if magic != MAGIC:
        raise BufferFileError(f"{path} is not a wove buffer file (it starts with {bytes(magic)!r})")
    table_end = _HEAD.size + _ENTRY.size * count
    if table_end + main_length > view.nbytes:
        raise BufferFileError(f"{path} is truncated: its header describes more than its {view.nbytes} bytes")
    buffers = []
    for index in range(count):
        offset, length = _ENTRY.unpack_from(view, _HEAD.size + _ENTRY.size * index)
        if offset < table_end + main_length or offset + length > view.nbytes:
            raise BufferFileError(f"{path} is truncated or damaged: buffer {index} lies outside the file")
        buffers.append(view[offset:offset + length])
    return view[table_end:table_end + main_length], buffers


def load(fd: int, path: str, loads: Callable[..., Any], expected_sha256: Optional[str] = None) -> Any:
    """Unpickle the buffer file open as ``fd`` (``loads(main, buffers=...)``), after checking its digest.

    The returned value may keep the mapping alive (arrays are views of it); the file itself can be deleted
    at once.
    """
    view = mapped(fd, path)
    if expected_sha256 is not None:
        import hashlib

        if hashlib.sha256(view).hexdigest() != expected_sha256:
            raise BufferFileError(f"{path} does not match its signed digest")
    main, buffers = parts(view, path)
    return loads(main, buffers=buffers)
