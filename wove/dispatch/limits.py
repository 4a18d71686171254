"""What one callback receiver lets its clients hold: memory for bodies, a run's turn, descriptors.

``ByteBudget`` bounds the request bodies held in memory at once (waiters served in arrival order);
``RunSlot`` gives one run's bodies a turn each, so junk sent with a known run id delays but cannot starve
its genuine events; ``descriptor_budget`` derives the connection cap from the descriptor limit.
"""

from __future__ import annotations

import asyncio
from collections import deque

MAX_CONNECTIONS = 4096               # ceiling; the real cap also stays well below RLIMIT_NOFILE


class ByteBudget:
    """Bytes of request bodies held in memory at once; waiters are served in arrival order."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.used = 0
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    async def acquire(self, size: int, timeout: float) -> bool:
        if not self._waiters and self.used + size <= self.capacity:
            self.used += size
            return True
        waiter = asyncio.get_running_loop().create_future()
        entry = (size, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except asyncio.TimeoutError:
            pass
        except BaseException:   # the connection went away while waiting
            if waiter.done() and not waiter.cancelled():
                self.release(size)
            else:
                self._withdraw(entry)
            raise
        if waiter.done() and not waiter.cancelled():
            return True
        self._withdraw(entry)
        return False

    def _withdraw(self, entry: tuple[int, asyncio.Future[None]]) -> None:
        entry[1].cancel()
        try:
            self._waiters.remove(entry)
        except ValueError:
            pass
        self._wake()

    def release(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.used + self._waiters[0][0] <= self.capacity:
            size, waiter = self._waiters.popleft()
            if not waiter.done():
                self.used += size
                waiter.set_result(None)


class RunSlot:
    """One run's turn to have a body read, taken in arrival order."""

    __slots__ = ("turn", "users")

    def __init__(self) -> None:
        self.turn = ByteBudget(1)
        self.users = 0


def descriptor_budget() -> int:
    """Raise the soft descriptor limit to the hard one; return a connection cap well below it."""
    try:
        import resource
    except ImportError:  # not on this platform
        return 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError):
            pass
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // 4))
