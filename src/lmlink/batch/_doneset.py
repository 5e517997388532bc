"""Compact sets of ids, pure: 8 bytes per id, whatever the ids look like.

A batch of ten million rows cannot keep ten million id strings (or Python ints: about 70
bytes each in a ``set``) just to know which are done or repeated. An id is reduced to a
64-bit BLAKE2b digest; a :class:`DigestSet` keeps its digests sorted in one ``array('Q')``
(8 bytes each) and answers membership by binary search. It is built in one go from any
number of digests: sorted in runs of 16,384, then merged, so building never holds more than
the array, a copy of it and one run as Python objects.

Two different ids share a digest with probability about n²/2⁶⁵: one in 370,000 for a
ten-million-row batch. Where a false match would lose work, the callers check the strings
(duplicate ids are confirmed by a second look at the input); where it would skip an item on
resume, that probability is the price of bounded memory, and is stated in the README.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from hashlib import blake2b

__all__ = ["DigestSet", "DoneSet", "digest", "repeated"]

_RUN = 1 << 14


def digest(key: str) -> int:
    """The 64-bit digest of an id.

    >>> digest("t1") == digest("t1") != digest("t2")
    True
    """
    raw = blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(raw, "little")


def _runs(values: array[int], *, consume: bool) -> list[array[int]]:
    """``values`` cut in sorted runs; ``consume`` empties ``values`` once they are made, so
    the two never coexist for long."""
    runs = [array("Q", sorted(values[i : i + _RUN])) for i in range(0, len(values), _RUN)]
    if consume:
        del values[:]
    return runs


def _build(values: array[int], *, consume: bool) -> tuple[array[int], array[int]]:
    """The distinct values of ``values``, ascending, and those that occur more than once."""
    runs = _runs(values, consume=consume)
    size = sum(len(r) for r in runs)
    out: array[int] = array("Q", [0]) * size  # filled in place: no regrowth
    twice: array[int] = array("Q")
    n = 0
    last = -1
    for value in runs[0] if len(runs) == 1 else heapq.merge(*runs):
        if n and value == last:
            if not twice or twice[-1] != value:
                twice.append(value)
            continue
        out[n] = value
        n += 1
        last = value
    del out[n:]
    return out, twice


def repeated(values: array[int]) -> array[int]:
    """The digests that occur more than once in ``values``, each once, ascending."""
    return _build(values, consume=False)[1]


class DigestSet:
    """A sorted, duplicate-free ``array('Q')`` of digests; ``in`` takes an id or a digest.

    >>> ids = DigestSet.of(digest(i) for i in ["a", "b"])
    >>> "a" in ids, "c" in ids, len(ids)
    (True, False, 2)
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: array[int] | None = None) -> None:
        self._keys: array[int] = keys if keys is not None else array("Q")

    @classmethod
    def of(cls, digests: Iterable[int]) -> DigestSet:
        """The set of ``digests`` (any order, repeats allowed)."""
        values = digests if isinstance(digests, array) else array("Q", digests)
        return cls(_build(values, consume=False)[0])

    @classmethod
    def taking(cls, digests: array[int]) -> tuple[DigestSet, array[int]]:
        """The set of ``digests`` and the ones repeated in it; ``digests`` is emptied on
        the way (its memory is reused, not doubled)."""
        keys, twice = _build(digests, consume=True)
        return cls(keys), twice

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            value = digest(key)
        elif isinstance(key, int):
            value = key
        else:
            return False
        keys = self._keys
        i = bisect_left(keys, value)
        return i < len(keys) and keys[i] == value

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[int]:
        return iter(self._keys)

    def minus(self, other: DigestSet) -> DigestSet:
        """The digests of this set that are not in ``other``."""
        return DigestSet(array("Q", (d for d in self._keys if d not in other)))

    @property
    def nbytes(self) -> int:
        """The memory its digests take."""
        return self._keys.itemsize * len(self._keys)

    def __repr__(self) -> str:
        return f"DigestSet({len(self)} ids)"


class DoneSet:
    """What an output file already holds, 8 bytes per id: the ids with an answer, and
    those whose only lines are errors.

    >>> done = DoneSet.of(ok=[digest("a")], errors=[digest("b"), digest("a")])
    >>> "a" in done, "b" in done, done.failed("a"), done.failed("b"), len(done)
    (True, True, False, True, 2)
    """

    __slots__ = ("_failed", "_ok")

    def __init__(self, ok: DigestSet | None = None, failed: DigestSet | None = None) -> None:
        self._ok = ok or DigestSet()
        self._failed = failed or DigestSet()

    @classmethod
    def of(cls, *, ok: Iterable[int], errors: Iterable[int]) -> DoneSet:
        """From the digests of the ids of answer lines and of error lines (repeats allowed:
        an id with any answer counts as answered)."""
        answered = DigestSet.of(ok)
        return cls(answered, DigestSet.of(errors).minus(answered))

    def __contains__(self, key: object) -> bool:
        return key in self._ok or key in self._failed

    def failed(self, key: str | int) -> bool:
        """True when the id's only lines are errors."""
        return key in self._failed

    @property
    def errors(self) -> DigestSet:
        """The ids whose only lines are errors."""
        return self._failed

    def without_errors(self, drop: DigestSet) -> DoneSet:
        """This set with the error-only ids in ``drop`` no longer done."""
        return DoneSet(self._ok, self._failed.minus(drop))

    def __len__(self) -> int:
        return len(self._ok) + len(self._failed)

    def __eq__(self, other: object) -> bool:
        """Equal to a mapping of every id it holds to whether that id failed."""
        if isinstance(other, DoneSet):
            return list(self._ok) == list(other._ok) and list(self._failed) == list(other._failed)
        if isinstance(other, Mapping):
            return len(other) == len(self) and all(
                isinstance(k, str) and k in self and self.failed(k) == bool(v)
                for k, v in other.items()
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def nbytes(self) -> int:
        """The memory its digests take."""
        return self._ok.nbytes + self._failed.nbytes

    def __repr__(self) -> str:
        return f"DoneSet({len(self._ok)} answered, {len(self._failed)} failed)"
