"""The pure drivers of ``lmlink._drivers``, stepped by hand with an injected clock: what each
asks for, in which order, and when it gives up. (Through real HTTP they run in
``test_client.py``; here their decisions are checked without a server or a sleep.)"""

from __future__ import annotations

from typing import Any

import pytest

import lmlink
from lmlink._drivers import Get, Sleep, probe_steps, server_info_steps, wait_ready_steps

MODELS_OK = (200, {}, b'{"data": [{"id": "m", "owned_by": "vllm"}]}')
LOADING = (503, {}, b'{"error": "Loading model"}')


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_wait_ready_backs_off_and_gives_up_at_its_deadline() -> None:
    """Nothing answers: probes alternate with sleeps of 0.1, 0.2, 0.4 ... 2 s, until the
    next sleep would pass the deadline; then APITimeoutError."""
    clock = Clock()
    steps = wait_ready_steps("http://h/v1", 10.0, clock)
    sleeps: list[float] = []

    def drive() -> None:
        step: Any = next(steps)
        while True:  # ends with the driver's error
            if isinstance(step, Sleep):
                sleeps.append(step.seconds)
                clock.now += step.seconds
                step = steps.send(None)
            else:
                (get,) = step
                assert get.url == "http://h/v1/models"
                assert 0 < get.timeout <= 1.0  # its second, or what is left
                step = steps.send((None,))

    with pytest.raises(lmlink.APITimeoutError, match="not ready within 10 s"):
        drive()
    assert sleeps[:6] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]
    assert sum(sleeps) <= 10.0


def test_wait_ready_asks_health_only_after_a_model_list() -> None:
    """A model list, then /health 503 (loading): not ready; /health 200: ready."""
    clock = Clock()
    steps = wait_ready_steps("http://h/v1", 10.0, clock)
    assert next(steps) == (Get("http://h/v1/models", 1.0),)
    assert steps.send((MODELS_OK,)) == (Get("http://h/health", 1.0),)
    assert steps.send((LOADING,)) == Sleep(0.1)
    assert steps.send(None) == (Get("http://h/v1/models", 1.0),)
    steps.send((MODELS_OK,))
    with pytest.raises(StopIteration) as done:
        steps.send(((200, {}, b'{"status": "ok"}'),))
    info = done.value.value
    assert (info.endpoint, info.models) == ("http://h/v1", ["m"])


def test_server_info_asks_models_and_root_at_once_then_the_version() -> None:
    """One round of two GETs, then the version where the kind has one (vLLM: /version)."""
    steps = server_info_steps("http://h:8000/v1")
    assert next(steps) == (Get("http://h:8000/v1/models"), Get("http://h:8000/"))
    assert steps.send((MODELS_OK, None)) == (Get("http://h:8000/version"),)
    with pytest.raises(StopIteration) as done:
        steps.send(((200, {}, b'{"version": "0.9.2"}'),))
    assert (done.value.value.kind, done.value.value.version) == ("vllm", "0.9.2")


def test_a_discovery_probe_without_an_answer_asks_nothing_more() -> None:
    """A port where nothing answers: one GET, then None."""
    steps = probe_steps("http://127.0.0.1:1/v1", 0.5)
    assert next(steps) == (Get("http://127.0.0.1:1/v1/models", 0.5),)
    with pytest.raises(StopIteration) as done:
        steps.send((None,))
    assert done.value.value is None
