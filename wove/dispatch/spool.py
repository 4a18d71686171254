"""Spool files: payloads and results too large for an environment variable or an HTTP body.

Files are private (mode 0600 in a mode 0700 directory) and written atomically (temporary name, then
``os.replace``), so a reader never sees half a file. An *array spool* packs the payloads of many items in one
file with an offset table, so each Slurm array element reads only its own share.

Whoever can write a spool directory can make the jobs reading it run their code, so:

- the submitting side refuses a spool root (or a log directory) that is not owned by the user or that others
  can write without the sticky bit (``check_dir``), creates each run's directory fresh with ``mkdir`` (0700,
  never reused) and then touches it only through a directory descriptor (``RunDir``): renaming the
  directory or putting a symlink in its place does not redirect anything;
- the job side opens a spooled payload relative to its directory, without following symlinks, and refuses
  it unless the file and its directory belong to the job's user and nobody else can write them
  (``open_private``); results and event files are written the same way (``write_private``).

Job start-up stays lean: only ``os``-level calls here, and ``pwd`` is imported only to word a refusal.
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


def check_dir(st: os.stat_result, path: str, kind: str = "spool directory", sticky_ok: bool = True) -> None:
    """Refuse a directory not owned by this user, or writable by others (unless sticky, with ``sticky_ok``).

    ``kind`` names it in the message ("spool directory", "log directory").
    """
    me = os.geteuid()
    if st.st_mode & _S_IFMT != _S_IFDIR:
        problem, fix = "is not a directory", f"remove it, or use a directory of your own such as {OWN_DIR_EXAMPLES}"
    elif st.st_uid != me:
        problem = f"is not owned by you ({owner_name(me)})"
        fix = f"use a directory of your own, such as {OWN_DIR_EXAMPLES}"
    elif st.st_mode & 0o022 and not (sticky_ok and st.st_mode & _S_ISVTX):
        problem = "can be written by other users (group/world-writable without the sticky bit)"
        fix = (f"chmod go-w {path} (or chmod +t {path} for a shared directory), or use a directory of your "
               f"own such as {OWN_DIR_EXAMPLES}")
    else:
        return
    setting = "executor_config log_dir" if kind.startswith("log") else "executor_config spool_dir or $WOVE_SPOOL_DIR"
    raise UnsafeSpoolError(
        f"refusing {kind} {_described(path, st)}: it {problem}, so another user could replace wove's files "
        f"there and run code as you. Fix: {fix} ({setting})")


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


# ---------------------------------------------------------------------------------------------- RunDir
class RunDir:
    """A directory used only through a descriptor opened without following symlinks.

    ``open_root`` opens a directory the user chose (refusing one others can write); ``subdir`` opens or
    creates one wove shares between runs under it (checked the same way); ``make_private`` creates a fresh
    0700 directory (failing if the name exists). Files go in with ``write_atomic`` and out with ``remove``;
    ``close_and_remove`` deletes a directory wove made, never following a symlink.
    """

    _registry: dict[str, RunDir] = {}

    def __init__(self, path: str, fd: int, parent: Optional[RunDir] = None, name: Optional[str] = None,
                 *, registered: bool = False):
        self.path = path
        self.fd = fd
        self.parent = parent
        self.name = name
        self._registered = registered
        if registered:
            RunDir._registry[path] = self

    # ------------------------------------------------------------------ opening
    @classmethod
    def open_root(cls, path: str, kind: str = "spool directory") -> RunDir:
        """The user's directory ``path`` (created 0700 with its parents when missing), checked by ``check_dir``."""
        path = os.path.abspath(os.path.expanduser(path))
        created = False
        try:
            os.makedirs(path, mode=0o700)
            created = True
        except FileExistsError:
            pass
        # The root itself may be a symlink the user made (e.g. to scratch): what it points at is checked.
        fd = os.open(path, os.O_RDONLY | _DIRECTORY)
        try:
            if created:
                os.fchmod(fd, 0o700)   # whatever the umask
            check_dir(os.fstat(fd), path, kind)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @classmethod
    def open_private(cls, path: str, what: str = "spool directory") -> RunDir:
        """An existing directory that must be this user's and writable by nobody else."""
        fd = _open_dir(path, what)
        try:
            _check_private(os.fstat(fd), path, what)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd)

    @classmethod
    def find(cls, path: str) -> Optional[RunDir]:
        """The open run directory of a live environment at ``path``, if any (for ``wove.slurm`` helpers)."""
        found = cls._registry.get(path)
        return found if found is not None and found.fd >= 0 else None

    def subdir(self, name: str, kind: str = "spool directory") -> RunDir:
        """``<self>/name``, shared by runs: created 0700 when missing, else refused like a root would be."""
        created = False
        try:
            os.mkdir(name, 0o700, dir_fd=self.fd)
            created = True
        except FileExistsError:
            pass
        path = os.path.join(self.path, name)
        fd = _open_dir(path, kind, self.fd, name)
        try:
            if created:
                os.fchmod(fd, 0o700)
            check_dir(os.fstat(fd), path, kind)
        except BaseException:
            os.close(fd)
            raise
        return RunDir(path, fd, self, name)

    def make_private(self, name: str, *, register: bool = False) -> RunDir:
        """Create ``<self>/name`` with mode 0700; fails if anything has that name already."""
        os.mkdir(name, 0o700, dir_fd=self.fd)
        path = os.path.join(self.path, name)
        fd = _open_dir(path, "directory", self.fd, name)
        try:
            os.fchmod(fd, 0o700)   # whatever the umask
            _check_private(os.fstat(fd), path, "directory")
        except BaseException:
            os.close(fd)
            raise
        return RunDir(path, fd, self, name, registered=register)

    # ------------------------------------------------------------------ files
    def file_path(self, name: str) -> str:
        return os.path.join(self.path, name)

    def write_atomic(self, name: str, data: bytes) -> str:
        """Write ``name`` (mode 0600) through a temporary file and ``os.replace``; returns its path."""
        tmp = f".{name}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o600, dir_fd=self.fd)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=self.fd)
            except OSError:
                pass
            raise
        return os.path.join(self.path, name)

    def read(self, name: str) -> bytes:
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=self.fd)
        with open(fd, "rb") as handle:
            return handle.read()

    def listdir(self) -> list[str]:
        return os.listdir(self.fd)

    def remove(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        if self._registered and RunDir._registry.get(self.path) is self:
            del RunDir._registry[self.path]
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def close_and_remove(self) -> None:
        """Delete this directory and everything in it (never through a symlink), then close it."""
        if self.fd < 0:
            return
        try:
            _clear(self.fd)
            parent = self.parent
            if parent is not None and parent.fd >= 0 and self.name:
                # Only the entry that is still this very directory: a symlink put in its place stays.
                mine, there = os.fstat(self.fd), os.stat(self.name, dir_fd=parent.fd, follow_symlinks=False)
                if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                    os.rmdir(self.name, dir_fd=parent.fd)
        except OSError:
            pass
        finally:
            self.close()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _clear(fd: int) -> None:
    """Remove everything inside the directory open as ``fd``, descending without following symlinks."""
    for name in os.listdir(fd):
        try:
            os.unlink(name, dir_fd=fd)
            continue
        except IsADirectoryError:
            pass
        except FileNotFoundError:
            continue
        except PermissionError:   # Linux says EISDIR, other systems EPERM, for a directory
            pass
        try:
            child = os.open(name, _DIR_FLAGS, dir_fd=fd)
        except OSError:
            continue
        try:
            _clear(child)
        finally:
            os.close(child)
        try:
            os.rmdir(name, dir_fd=fd)
        except OSError:
            pass


def remove_tree(path: str) -> None:
    """Delete the directory ``path`` wove made, never following a symlink (``shutil.rmtree`` without 3.11)."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        parent_fd = os.open(parent, os.O_RDONLY | _DIRECTORY)
    except OSError:
        return
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError:
        os.close(parent_fd)
        return
    RunDir(path, fd, RunDir(parent, parent_fd), name).close_and_remove()
    os.close(parent_fd)


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


def write_private(directory: str, name: str, data: bytes, what: str = "spool directory") -> str:
    """Job side: write ``directory/name`` atomically, once ``directory`` is checked to be this user's alone."""
    with RunDir.open_private(directory, what) as target:
        return target.write_atomic(name, data)


def remove_private(path: str) -> None:
    """Job side: delete ``path`` if its directory is this user's alone (never through a symlink)."""
    directory, name = os.path.split(path)
    try:
        with RunDir.open_private(directory or ".") as target:
            target.remove(name)
    except OSError:
        pass


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
