"""pytest plugin (entry point ``pytest11: lmlink = lmlink.testing._pytest``).

Provides ``lmlink_server``: a started :class:`~lmlink.testing.FakeServer`, stopped after the
test.

Example::

    def test_hello(lmlink_server):
        lmlink_server.enqueue(Reply(content="Hello"))
        client = MyClient(base_url=lmlink_server.url)
        assert client.chat("hi") == "Hello"
        assert lmlink_server.requests[0].json["messages"][0]["content"] == "hi"
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ._server import FakeServer

__all__ = ["lmlink_server"]


@pytest.fixture
def lmlink_server() -> Iterator[FakeServer]:
    """A running FakeServer (model ``"fake-model"``), stopped when the test ends.

    Example: ``def test_x(lmlink_server): requests.get(lmlink_server.url + "/models")``
    """
    with FakeServer() as server:
        yield server
