"""The value classes: construction, equality, repr, immutability, pickling, ``replace``."""

from __future__ import annotations

import copy
import pickle
from typing import Any

import pytest

import lmlink

FROZEN: list[Any] = [
    lmlink.ToolCall("call_1", "add", '{"a": 1}'),
    lmlink.ModelInfo("m", owned_by="me", created=7, raw={"id": "m", "extra": [1]}),
    lmlink.Timeout(connect=1, idle=2, total=3),
    lmlink.RetryPolicy(max_retries=5, load_wait=0),
]
MUTABLE: list[Any] = [
    lmlink.Message("user", "hi", name="ann"),
    lmlink.ChatResponse(
        content="x", reasoning="r", tool_calls=[FROZEN[0]], parsed={"a": [1]}, ttft_s=0.1
    ),
    lmlink.ServerInfo("http://127.0.0.1:1/v1", kind="vllm", models=["m"]),
]


@pytest.mark.parametrize("value", FROZEN + MUTABLE, ids=lambda v: type(v).__name__)
def test_values_survive_pickle_and_copy(value: Any) -> None:
    for clone in (pickle.loads(pickle.dumps(value)), copy.copy(value), copy.deepcopy(value)):
        assert clone == value
        assert clone is not value
        assert repr(clone) == repr(value)


@pytest.mark.parametrize("value", FROZEN, ids=lambda v: type(v).__name__)
def test_frozen_values_refuse_assignment_and_hash(value: Any) -> None:
    name = type(value).__slots__[0]
    with pytest.raises(AttributeError):
        setattr(value, name, None)
    with pytest.raises(AttributeError):
        delattr(value, name)
    assert hash(value) == hash(pickle.loads(pickle.dumps(value)))


@pytest.mark.parametrize("value", MUTABLE, ids=lambda v: type(v).__name__)
def test_mutable_values_are_unhashable(value: Any) -> None:
    with pytest.raises(TypeError):
        hash(value)


def test_repr_names_fields_in_order() -> None:
    assert repr(lmlink.ToolCall("i", "n", "{}")) == (
        "ToolCall(id='i', name='n', arguments='{}', type='function')"
    )
    assert repr(lmlink.Timeout()) == "Timeout(connect=10.0, idle=60.0, total=None)"


def test_model_info_ignores_raw_in_eq_and_repr() -> None:
    a = lmlink.ModelInfo("m", raw={"x": 1})
    b = lmlink.ModelInfo("m", raw={"x": 2})
    assert a == b
    assert hash(a) == hash(b)
    assert "raw" not in repr(a)
    assert a.raw == {"x": 1}


def test_equality_is_by_class_and_fields() -> None:
    assert lmlink.Message("user", "a") == lmlink.Message("user", "a")
    assert lmlink.Message("user", "a") != lmlink.Message("user", "b")
    assert lmlink.Message("user", "a") != ("user", "a")
    assert lmlink.ChatResponse() == lmlink.ChatResponse()
    assert lmlink.ChatResponse().tool_calls is not lmlink.ChatResponse().tool_calls


def test_replace_checks_the_new_value() -> None:
    policy = lmlink.RetryPolicy()
    changed = policy.replace(max_retries=0)
    assert changed.max_retries == 0
    assert changed.load_wait == policy.load_wait
    assert policy.max_retries == 3
    with pytest.raises(lmlink.ConfigurationError):
        policy.replace(jitter=2)
    with pytest.raises(lmlink.ConfigurationError):
        lmlink.Timeout().replace(idle=-1)
    with pytest.raises(TypeError):
        policy.replace(nonsense=1)


class _Tagged(lmlink.Message):
    """A user's subclass with a field of its own."""

    __slots__ = ("tag",)

    def __init__(self, role: str, content: str, *, tag: int = 0) -> None:
        super().__init__(role, content)
        self.tag = tag


class _MyTimeout(lmlink.Timeout):
    __slots__ = ()


def test_subclasses_keep_the_inherited_fields() -> None:
    """A subclass, with or without slots of its own, compares, shows, pickles and replaces
    every field, its bases' included."""
    a = _Tagged("user", "hi", tag=1)
    assert a != _Tagged("assistant", "yo", tag=1)
    assert a == _Tagged("user", "hi", tag=1)
    assert repr(a).startswith("_Tagged(role='user', content='hi', ")
    assert "tag=1" in repr(a)
    assert pickle.loads(pickle.dumps(a)) == a
    t = _MyTimeout(connect=1, idle=2)
    assert t != _MyTimeout(connect=1, idle=3)
    assert repr(t) == "_MyTimeout(connect=1, idle=2, total=None)"
    assert pickle.loads(pickle.dumps(t)) == t
    assert t.replace(total=9) == _MyTimeout(connect=1, idle=2, total=9)


def test_values_match_positionally() -> None:
    """``case ToolCall(id, name, arguments)`` works, in the order of the constructor."""
    match lmlink.ToolCall("call_1", "add", "{}"):
        case lmlink.ToolCall(call_id, name, arguments):
            assert (call_id, name, arguments) == ("call_1", "add", "{}")
        case _:
            pytest.fail("no match")
    match lmlink.Message("user", "hi"):
        case lmlink.Message(role, content):
            assert (role, content) == ("user", "hi")
        case _:
            pytest.fail("no match")
