"""Spool files: payloads and results too large for an environment variable or an HTTP body.

Files are private (mode 0600 in a mode 0700 directory) and written atomically (temporary name, then
``os.replace``), so a reader never sees half a file. An *array spool* packs the payloads of many items in one
file with an offset table, so each Slurm array element reads only its own share.

Whoever can write a spool directory can make the jobs reading it run their code, so:

- the submitting side refuses a spool root (or a log directory) that is not owned by the user or that others
  can write without the sticky bit (``check_dir``), creates each run's directory fresh with ``mkdir`` (0700,
  never reused) and then touches it only through a directory descriptor (``RunDir``): renaming the
  directory or putting a symlink in its place does not redirect anything. That side lives in ``rundir``
  (still reachable as ``spool.RunDir``, ``spool.check_dir``, imported on first use);
- the job side opens a spooled payload relative to its directory, without following symlinks, and refuses
  it unless the file and its directory belong to the job's user and nobody else can write them
  (``open_private``); results and event files are written the same way (``write_private``).

Every Slurm job imports this module, so its start-up stays lean: only ``os``-level calls here, ``pwd`` is
imported only to word a refusal, and ``rundir`` (which imports ``typing``) only by the driver.
"""

from __future__ import annotations

import os
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:  # keep remote jobs from importing typing at start-up
    from collections.abc import Sequence
    from typing import Any, Optional

    from .rundir import RunDir as RunDir
    from .rundir import check_dir as check_dir
    from .rundir import remove_tree as remove_tree

ARRAY_MAGIC = b"WOVEARR1"
_HEADER = struct.Struct("<8sQQ")      # magic, item count, items per element
_ENTRY = struct.Struct("<QQ")         # offset, length

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FLAGS = os.O_RDONLY | _DIRECTORY | _NOFOLLOW
_S_IFMT, _S_IFDIR, _S_IFREG, _S_ISVTX = 0o170000, 0o040000, 0o100000, 0o1000
OWN_DIR_EXAMPLES = "~/.cache/wove/spool or /scratch/$USER/wove"


class UnsafeSpoolError(OSError):
    """A spool or log directory, or a spool file, that another user could have written: wove refuses it."""


# ---------------------------------------------------------------------------------------------- checks
def owner_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return f"uid {uid}"


def _described(path: str, st: os.stat_result) -> str:
    return f"{path} (owner {owner_name(st.st_uid)}, mode {st.st_mode & 0o7777:04o})"


def _check_private(st: os.stat_result, path: str, what: str) -> None:
    """Job side: ``path`` must belong to this user and be writable by nobody else."""
    me = os.geteuid()
    if st.st_uid == me and not st.st_mode & 0o022:
        return
    problem = (f"it belongs to {owner_name(st.st_uid)}, not to this job's user {owner_name(me)}"
               if st.st_uid != me else "other users can write it")
    raise UnsafeSpoolError(
        f"refusing {what} {_described(path, st)}: {problem}, so it may not be what wove wrote; the spool "
        f"directory must be private to you (wove creates it so; use a directory of your own such as "
        f"{OWN_DIR_EXAMPLES})")


def _not_a_directory(path: str, kind: str) -> UnsafeSpoolError:
    try:
        st = os.lstat(path)
    except OSError:
        return UnsafeSpoolError(f"refusing {kind} {path}: it is not a directory")
    what = "a symbolic link" if st.st_mode & _S_IFMT == 0o120000 else "not a directory"
    return UnsafeSpoolError(f"refusing {kind} {_described(path, st)}: it is {what}; wove only uses real "
                            f"directories of your own there (remove it, or use a directory of your own such as "
                            f"{OWN_DIR_EXAMPLES})")


def _open_dir(path: str, kind: str, dir_fd: Optional[int] = None, name: Optional[str] = None) -> int:
    try:
        return os.open(name if name is not None else path, _DIR_FLAGS, dir_fd=dir_fd)
    except NotADirectoryError:
        raise _not_a_directory(path, kind) from None


# ---------------------------------------------------------------------------------------------- job side
def open_private(path: str, what: str = "spooled payload") -> int:
    """Open file ``path`` for reading after checking it and its directory are this user's alone."""
    directory, name = os.path.split(path)
    directory = directory or "."
    dir_fd = _open_dir(directory, f"directory of the {what}")
    try:
        _check_private(os.fstat(dir_fd), directory, f"directory of the {what}")
        try:
            fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=dir_fd)
        except OSError:
            if _is_symlink(name, dir_fd):   # O_NOFOLLOW refused it (ELOOP)
                raise UnsafeSpoolError(f"refusing {what} {path}: it is a symbolic link") from None
            raise
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if st.st_mode & _S_IFMT != _S_IFREG:
            raise UnsafeSpoolError(f"refusing {what} {_described(path, st)}: it is not a regular file")
        _check_private(st, path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode & _S_IFMT == 0o120000
    except OSError:
        return False


def write_private(directory: str, name: str, data: bytes | Sequence[Any], what: str = "spool directory") -> str:
    """Job side: write ``directory/name`` atomically, once ``directory`` is checked to be this user's alone."""
    return write_private_digest(directory, name, data, what)[0]


def write_private_digest(directory: str, name: str, data: bytes | Sequence[Any], what: str = "spool directory",
                         digest: bool = False) -> tuple[str, Optional[str]]:
    """``write_private``, also returning the SHA-256 of what was written when ``digest`` is set."""
    dir_fd = _open_private_dir(directory, what)
    try:
        hexdigest = _write_at(dir_fd, name, data, directory, digest)
    finally:
        os.close(dir_fd)
    return os.path.join(directory, name), hexdigest


def remove_private(path: str) -> None:
    """Job side: delete ``path`` if its directory is this user's alone (never through a symlink)."""
    directory, name = os.path.split(path)
    try:
        dir_fd = _open_private_dir(directory or ".", "spool directory")
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        finally:
            os.close(dir_fd)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------- by descriptor
def _open_private_dir(path: str, what: str) -> int:
    """A descriptor of directory ``path``, which must be this user's and writable by nobody else."""
    fd = _open_dir(path, what)
    try:
        _check_private(os.fstat(fd), path, what)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_at(dir_fd: int, name: str, data: bytes | Sequence[Any], where: str = "the spool directory",
              digest: bool = False) -> Optional[str]:
    """Write ``name`` (mode 0600) in the directory open as ``dir_fd``, through a temporary file and
    ``os.replace``. ``data`` is bytes or a sequence of buffers written one after another (no joined copy).

    A file that does not fit raises ``wove.errors.SpoolFullError`` naming ``where`` and the bytes needed, and
    leaves nothing behind. With ``digest``, returns the SHA-256 (hex) of what was written.
    """
    chunks: list[Any] = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    views = [memoryview(chunk).cast("B") for chunk in chunks]
    total = sum(view.nbytes for view in views)
    hasher = _Hasher(views, total) if digest else None
    if total > _ROOM_CHECK_BYTES:
        available = _available(dir_fd)
        if available is not None and total > available:
            raise _full(where, name, total, available)
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in _NO_ROOM:   # not even an empty file fits (no inodes, or the quota is reached)
            raise _full(where, name, total, _available(dir_fd)) from exc
        raise
    try:
        try:
            if hasher is not None:
                hasher.start()   # large: hashes in a thread of its own while this one writes
            for view in views:
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno in _NO_ROOM:
            raise _full(where, name, total, _available(dir_fd)) from exc
        raise
    finally:
        if hasher is not None:
            hasher.join()
    return hasher.hexdigest if hasher is not None else None


class _Hasher:
    """SHA-256 of buffers, computed beside the write that stores them (both release the GIL)."""

    PARALLEL_BYTES = 4 * 1024 * 1024

    def __init__(self, views: list[memoryview], total: int):
        self._thread: Any = None
        self.hexdigest = ""
        if total <= self.PARALLEL_BYTES:   # the built-in SHA-256: importing OpenSSL's costs ~7 ms in a job
            from .protocol import sha256

            self._views, self._sha = views, sha256()
            self._run()
        else:   # OpenSSL's SHA-256: several times faster than the built-in one, for large files
            import hashlib

            self._views, self._sha = views, hashlib.sha256()

    def _run(self) -> None:
        for view in self._views:
            self._sha.update(view)
        self.hexdigest = self._sha.hexdigest()

    def start(self) -> None:
        if not self.hexdigest:
            import threading

            self._thread = threading.Thread(target=self._run, name="wove-hash", daemon=True)
            self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()


_ROOM_CHECK_BYTES = 1024 * 1024   # files this large are checked against the free space before writing
_NO_ROOM = (28, 122)              # ENOSPC, EDQUOT


def _available(dir_fd: int) -> Optional[int]:
    try:
        st = os.fstatvfs(dir_fd)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _full(where: str, name: str, needed: int, available: Optional[int]) -> OSError:
    """The error for a file that does not fit (``wove.errors`` is imported only now: jobs stay lean)."""
    from ..errors import SpoolFullError

    free = f"{available:,} bytes are free there" if available is not None else "its free space is unknown"
    return SpoolFullError(
        f"no room for {name} in {where}: it needs {needed:,} bytes and {free} (disk full or quota reached); "
        "its partial file was deleted. Free space there, or set executor_config['spool_dir'] (or "
        "$WOVE_SPOOL_DIR) to a directory on a larger filesystem that the jobs can read",
        directory=where, needed=needed, available=available)


# ---------------------------------------------------------------------------------------------- paths
def ensure_dir(path: str) -> str:
    """Create wove's own directory ``path`` (and parents) if needed, private to this user (0700)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_atomic(path: str, data: bytes) -> str:
    """Write ``path`` atomically, relative to its directory (which must be this user's alone)."""
    directory, name = os.path.split(path)
    return write_private(directory or ".", name, data)


def payload_name(run_id: str) -> str:
    return f"{run_id}.payload"


def payload_path(spool_dir: str, run_id: str) -> str:
    return os.path.join(spool_dir, payload_name(run_id))


def result_name(run_id: str, incarnation: int = 0) -> str:
    return f"{run_id}.{incarnation}.result"


def result_path(spool_dir: str, run_id: str, incarnation: int = 0) -> str:
    return os.path.join(spool_dir, result_name(run_id, incarnation))


def array_data(texts: Sequence[str], per_element: int = 1) -> bytes:
    """An array spool's bytes: element ``i`` owns items ``i*per_element ...``."""
    blobs = [text.encode("ascii") for text in texts]
    table_end = _HEADER.size + _ENTRY.size * len(blobs)
    entries, offset = [], table_end
    for blob in blobs:
        entries.append(_ENTRY.pack(offset, len(blob)))
        offset += len(blob)
    return b"".join([_HEADER.pack(ARRAY_MAGIC, len(blobs), per_element), *entries, *blobs])


def write_array(path: str, texts: Sequence[str], per_element: int = 1) -> str:
    """Write many payload texts into one array spool; element ``i`` owns items ``i*per_element ...``."""
    return write_atomic(path, array_data(texts, per_element))


def read_payload_texts(path: str, array_index: Optional[int] = None) -> list[str]:
    """The payload text(s) in spool file ``path``; raises ``UnsafeSpoolError`` for a file others could write."""
    with open(open_private(path), "rb") as handle:
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


# ---------------------------------------------------------------------------------------------- driver side
_IN_RUNDIR = frozenset({"RunDir", "check_dir", "remove_tree"})


def __getattr__(name: str) -> object:
    """``spool.RunDir``, ``spool.check_dir``, ``spool.remove_tree``: the driver side, in ``rundir``, imported
    on first use so that a job never loads it."""
    if name in _IN_RUNDIR:
        from . import rundir

        value = getattr(rundir, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
