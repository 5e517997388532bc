"""lmlink: a fast, hardened client for local OpenAI-compatible LLM servers.

>>> import lmlink
>>> with lmlink.Client(endpoint="http://127.0.0.1:11434/v1", model="qwen3:8b") as client:
...     print(client.chat("Say hi").content)

The table of contents; each name lives in a private module named after its concern.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._client import Client, discover
from ._config import RetryPolicy, Timeout
from ._discovery import ServerInfo
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ContextLengthError,
    DecodeError,
    InternalServerError,
    LMLinkError,
    ModelLoadingError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    PromptTooLongError,
    RateLimitError,
    ResponseTooLargeError,
    StreamError,
    StructuredOutputError,
    UnsupportedError,
)
from ._models import ChatResponse, Choice, Message, ModelInfo, TokenLogprob, ToolCall
from ._retry import set_instant_retries
from ._streaming import ChatStream
from ._version import __version__

if TYPE_CHECKING:
    from ._aclient import AsyncClient, adiscover
    from ._astreaming import AsyncChatStream
    from ._embed import Embeddings
    from ._tools import tool_schema
    from .batch import BatchSummary, arun_batch, run_batch

# Loaded on first use: asyncio and inspect cost more than all of lmlink's own modules.
_LAZY = {
    "AsyncClient": "._aclient",
    "adiscover": "._aclient",
    "AsyncChatStream": "._astreaming",
    "Embeddings": "._embed",
    "tool_schema": "._tools",
    "run_batch": ".batch",
    "arun_batch": ".batch",
    "BatchSummary": ".batch",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lmlink' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncChatStream",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "BatchSummary",
    "ChatResponse",
    "ChatStream",
    "Choice",
    "Client",
    "ConfigurationError",
    "ContextLengthError",
    "DecodeError",
    "Embeddings",
    "InternalServerError",
    "LMLinkError",
    "Message",
    "ModelInfo",
    "ModelLoadingError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "PromptTooLongError",
    "RateLimitError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServerInfo",
    "StreamError",
    "StructuredOutputError",
    "Timeout",
    "TokenLogprob",
    "ToolCall",
    "UnsupportedError",
    "__version__",
    "adiscover",
    "arun_batch",
    "discover",
    "run_batch",
    "set_instant_retries",
    "tool_schema",
]
