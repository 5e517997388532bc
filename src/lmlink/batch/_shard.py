"""Shards, pure: which ids one of N machines runs (``--shard K/N``).

An id belongs to shard ``1 + h % N``, where ``h`` is the 8-byte BLAKE2b hash of its UTF-8
bytes, read little-endian: the same on every machine, Python version and run, and
independent of the line an id is on, so editing the input (adding, removing, reordering
rows) never moves an id to another shard. N runs with ``--shard 1/N`` ... ``--shard N/N``,
each with its own output, cover every id exactly once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from lmlink._errors import ConfigurationError

from ._doneset import digest

__all__ = ["Shard", "in_shard", "parse_shard", "shard_of", "take_shard"]

Shard = tuple[int, int]  # (K, N), 1 <= K <= N
T = TypeVar("T")


def parse_shard(value: Any) -> Shard | None:
    """``(K, N)`` from ``"K/N"`` or a pair; ``None`` stays ``None`` (no sharding).

    >>> parse_shard("2/3")
    (2, 3)
    """
    if value is None:
        return None
    parts: Any = value
    if isinstance(value, str):
        parts = value.strip().split("/")
        if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
            parts = (int(parts[0]), int(parts[1]))
    if (
        isinstance(parts, (tuple, list))
        and len(parts) == 2
        and all(isinstance(p, int) and not isinstance(p, bool) for p in parts)
        and 1 <= parts[0] <= parts[1]
    ):
        return (parts[0], parts[1])
    raise ConfigurationError(
        f"shard must be K/N with 1 <= K <= N (like 1/4, or (1, 4)), not {value!r}"
    )


def shard_of(item_id: str, count: int) -> int:
    """The shard (1 to ``count``) that ``item_id`` belongs to."""
    return 1 + digest(item_id) % count


def in_shard(id_digest: int, shard: Shard) -> bool:
    """Whether the id whose :func:`~lmlink.batch._doneset.digest` is ``id_digest`` is in
    ``shard`` (the digest is the same hash, so no id string is needed)."""
    return id_digest % shard[1] == shard[0] - 1


def take_shard(items: Iterable[T], shard: Shard | None, key: Any = None) -> list[T]:
    """The items of ``shard`` (all of them for ``None``); ``key(item)`` is the id
    (default: ``item.id``)."""
    if shard is None:
        return list(items)
    k, n = shard
    get = key or (lambda item: item.id)
    return [item for item in items if shard_of(get(item), n) == k]
