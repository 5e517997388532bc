"""The base of lmlink's small value classes: ``repr``, ``==`` and pickling from ``__slots__``.

``dataclasses`` imports ``inspect`` (and ``ast``, ``dis``, ``tokenize`` behind it) and
compiles every class it decorates: together about a fifth of ``import lmlink``. These classes
write their ``__init__`` by hand and inherit the rest from here.

- :class:`Record`: mutable, compared by value, unhashable (like a plain dataclass);
- :class:`FrozenRecord`: assignment raises ``AttributeError``; hashable.

``_compared`` and ``_shown`` name the slots that ``==`` and ``repr`` use (default: all, a
subclass's own after its bases').
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["FrozenRecord", "Record"]


class Record:  # noqa: PLW1641 (unhashable on purpose, see below)
    __slots__ = ()
    _fields: ClassVar[tuple[str, ...]] = ()  # every slot, base classes' first
    _compared: ClassVar[tuple[str, ...] | None] = None
    _shown: ClassVar[tuple[str, ...] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Collected once per class over the whole MRO, so a subclass with slots of its own
        # still compares, shows, pickles and replaces the inherited fields.
        super().__init_subclass__(**kwargs)
        names: list[str] = []
        for klass in reversed(cls.__mro__):
            slots = klass.__dict__.get("__slots__", ())
            for name in (slots,) if isinstance(slots, str) else slots:
                if name not in names and not name.startswith("__"):
                    names.append(name)
        cls._fields = tuple(names)
        setattr(cls, "__match_args__", cls._fields)  # noqa: B010 (``case ToolCall(i, n, a):``)

    def _key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._compared or self._fields)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Record)
        return self._key() == other._key()

    # Defining __eq__ makes the class unhashable (__hash__ = None), as a mutable value should be.

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in self._shown or self._fields)
        return f"{type(self).__name__}({shown})"

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._fields)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for field, value in zip(self._fields, state, strict=True):
            object.__setattr__(self, field, value)


class FrozenRecord(Record):
    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of {type(self).__name__}")

    def __hash__(self) -> int:
        return hash(self._key())

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (checked like a new value).

        >>> policy.replace(max_retries=0)
        """
        fields = {name: getattr(self, name) for name in self._fields}
        return type(self)(**{**fields, **changes})

    def _set(self, **values: object) -> None:
        """For ``__init__``: set the fields."""
        for field, value in values.items():
            object.__setattr__(self, field, value)
