"""Spool files: payloads and results too large for an environment variable or an HTTP body.

Files are private (mode 0600 in a mode 0700 directory) and written atomically (temporary name, then
``os.replace``), so a reader never sees half a file. An *array spool* packs the payloads of many items in one
file with an offset table, so each Slurm array element reads only its own share.
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # keep remote jobs from importing typing at start-up
    from collections.abc import Sequence
    from typing import Optional

ARRAY_MAGIC = b"WOVEARR1"
_HEADER = struct.Struct("<8sQQ")      # magic, item count, items per element
_ENTRY = struct.Struct("<QQ")         # offset, length


def ensure_dir(path: str) -> str:
    """Create wove's own directory ``path`` (and parents) if needed, private to this user (0700)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_atomic(path: str, data: bytes) -> str:
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def payload_path(spool_dir: str, run_id: str) -> str:
    return os.path.join(spool_dir, f"{run_id}.payload")


def result_path(spool_dir: str, run_id: str, incarnation: int = 0) -> str:
    return os.path.join(spool_dir, f"{run_id}.{incarnation}.result")


def write_array(path: str, texts: Sequence[str], per_element: int = 1) -> str:
    """Write many payload texts into one array spool; element ``i`` owns items ``i*per_element ...``."""
    blobs = [text.encode("ascii") for text in texts]
    table_end = _HEADER.size + _ENTRY.size * len(blobs)
    entries, offset = [], table_end
    for blob in blobs:
        entries.append(_ENTRY.pack(offset, len(blob)))
        offset += len(blob)
    data = b"".join([_HEADER.pack(ARRAY_MAGIC, len(blobs), per_element), *entries, *blobs])
    return write_atomic(path, data)


def read_payload_texts(path: str, array_index: Optional[int] = None) -> list[str]:
    with open(path, "rb") as handle:
        head = handle.read(_HEADER.size)
        if not head.startswith(ARRAY_MAGIC):
            return [(head + handle.read()).decode("ascii")]
        _, count, per_element = _HEADER.unpack(head)
        if array_index is None:
            raise OSError(0, f"{path} is an array spool, but no array index was given "
                             "(SLURM_ARRAY_TASK_ID or WOVE_ARRAY_INDEX)")
        first = array_index * per_element
        if not 0 <= first < count:
            raise OSError(0, f"array index {array_index} is out of range for {path} ({count} items, "
                             f"{per_element} per element)")
        last = min(first + per_element, count)
        handle.seek(_HEADER.size + _ENTRY.size * first)
        entries = [_ENTRY.unpack(handle.read(_ENTRY.size)) for _ in range(first, last)]
        texts = []
        for offset, length in entries:
            handle.seek(offset)
            texts.append(handle.read(length).decode("ascii"))
        return texts


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
