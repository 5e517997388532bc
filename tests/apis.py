"""One face for the blocking and the asyncio client, so every behavioural test runs both.

:class:`SyncAPI` wraps :class:`lmlink.Client`; :class:`AsyncAPI` drives
:class:`lmlink.AsyncClient` on a private event loop that lives as long as it does (so its
connection pool persists across calls, as in real use).
"""

from __future__ import annotations

import asyncio
from typing import Any

import lmlink

__all__ = ["API", "AsyncAPI", "SyncAPI"]


class SyncAPI:
    """The blocking client, behind the same face as :class:`AsyncAPI`."""

    kind = "sync"

    def __init__(self, **kwargs: Any) -> None:
        self.client = lmlink.Client(**kwargs)

    def chat(self, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
        return self.client.chat(*args, **kwargs)

    def chat_stream(self, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
        return self.client.chat_stream(*args, **kwargs)

    def stream(self, *args: Any, take: int | None = None, **kwargs: Any) -> tuple[list[str], Any]:
        """Iterate a stream (only ``take`` deltas, if given); return deltas and the stream."""
        deltas: list[str] = []
        with self.client.stream(*args, **kwargs) as s:
            for delta in s:
                deltas.append(delta)
                if take is not None and len(deltas) >= take:
                    break
        return deltas, s

    def models(self) -> list[lmlink.ModelInfo]:
        return self.client.models()

    def close(self) -> None:
        self.client.close()


class AsyncAPI:
    """The asyncio client, driven on a private event loop that lives as long as it."""

    kind = "async"

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.client = self.run(self._make(kwargs))

    @staticmethod
    async def _make(kwargs: dict[str, Any]) -> lmlink.AsyncClient:
        return lmlink.AsyncClient(**kwargs)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def chat(self, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
        return self.run(self.client.chat(*args, **kwargs))  # type: ignore[no-any-return]

    def chat_stream(self, *args: Any, **kwargs: Any) -> lmlink.ChatResponse:
        return self.run(self.client.chat_stream(*args, **kwargs))  # type: ignore[no-any-return]

    def stream(self, *args: Any, take: int | None = None, **kwargs: Any) -> tuple[list[str], Any]:
        async def go() -> tuple[list[str], Any]:
            deltas: list[str] = []
            async with self.client.stream(*args, **kwargs) as s:
                async for delta in s:
                    deltas.append(delta)
                    if take is not None and len(deltas) >= take:
                        break
            return deltas, s

        return self.run(go())  # type: ignore[no-any-return]

    def models(self) -> list[lmlink.ModelInfo]:
        return self.run(self.client.models())  # type: ignore[no-any-return]

    def close(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()


API = SyncAPI | AsyncAPI
