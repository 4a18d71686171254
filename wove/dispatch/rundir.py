"""The driver side of the spool: run directories used only through a directory descriptor.

The submitting process refuses a spool root (or a log directory) that is not owned by the user or that
others can write without the sticky bit (``check_dir``), creates each run's directory fresh with ``mkdir``
(0700, never reused) and then touches it only through a descriptor (``RunDir``): renaming the directory or
putting a symlink in its place does not redirect anything. Jobs never import this module; what they read
and write is in ``spool``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, Optional

from .spool import (
    _DIR_FLAGS,
    _DIRECTORY,
    _NOFOLLOW,
    _S_IFDIR,
    _S_IFMT,
    _S_ISVTX,
    OWN_DIR_EXAMPLES,
    UnsafeSpoolError,
    _check_private,
    _described,
    _open_dir,
    _open_private_dir,
    _write_at,
    owner_name,
)


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
        return cls(path, _open_private_dir(path, what))

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

    def write_atomic(self, name: str, data: bytes | Sequence[Any]) -> str:
        """Write ``name`` (mode 0600) through a temporary file and ``os.replace``; returns its path.

        ``data`` may be a sequence of buffers (written in turn, never joined); a file that does not fit
        raises ``SpoolFullError`` and leaves nothing behind.
        """
        _write_at(self.fd, name, data, self.path)
        return os.path.join(self.path, name)

    def write_hashed(self, name: str, data: bytes | Sequence[Any]) -> str:
        """``write_atomic``, hashing as it writes: the SHA-256 (hex) of what was written."""
        digest = _write_at(self.fd, name, data, self.path, digest=True)
        assert digest is not None
        return digest

    def rename(self, name: str, new_name: str) -> str:
        """Rename a file of this directory (replacing ``new_name``); returns its new path."""
        os.replace(name, new_name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        return os.path.join(self.path, new_name)

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
