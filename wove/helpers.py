"""Small data-shaping helpers that come up around mapped tasks (splitting work, joining results)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from .errors import InvalidTypeError, InvalidValueError

T = TypeVar("T")
K = TypeVar("K")
V = TypeVar("V")


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        # "Fold size must be a positive integer." / "Batch count ...": wove 2.0.3's words
        raise InvalidValueError(f"{name.capitalize()} must be a positive integer. Got {value!r}")
    return value


def flatten(list_of_lists: Iterable[Iterable[T]]) -> list[T]:
    """Join one level of nesting: ``[[1, 2], [3]] -> [1, 2, 3]``."""
    return [item for chunk in list_of_lists for item in chunk]


def fold(items: Iterable[T], size: int) -> list[list[T]]:
    """Split ``items`` into consecutive chunks of ``size`` (the last one may be shorter)."""
    _positive_int("fold size", size)
    seq = list(items)
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def batch(items: Iterable[T], count: int) -> list[list[T]]:
    """Split ``items`` into ``count`` chunks of nearly equal size (fewer if there are fewer items)."""
    _positive_int("batch count", count)
    seq = list(items)
    if not seq:
        return []
    count = min(count, len(seq))
    base, extra = divmod(len(seq), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + base + (1 if i < extra else 0)
        chunks.append(seq[start:end])
        start = end
    return chunks


def undict(mapping: Mapping[K, V]) -> list[tuple[K, V]]:
    """Turn a dict into a list of ``(key, value)`` pairs, ready to map over."""
    if not isinstance(mapping, Mapping):
        raise InvalidTypeError(f"undict expects a mapping, got {type(mapping).__name__}")
    return list(mapping.items())


def redict(pairs: Iterable[tuple[K, V]]) -> dict[K, V]:
    """Turn ``(key, value)`` pairs (for example a mapped task's results) back into a dict."""
    return dict(pairs)


def denone(items: Iterable[T]) -> list[T]:
    """Drop ``None`` entries and keep every other value, falsy ones included."""
    return [item for item in items if item is not None]
