"""lmlink: a fast, hardened client for local OpenAI-compatible LLM servers.

>>> import lmlink
>>> with lmlink.Client(endpoint="http://127.0.0.1:11434/v1", model="qwen3:8b") as client:
...     print(client.chat("Say hi").content)

The table of contents; each name lives in a private module named after its concern.
"""

from __future__ import annotations

import logging

from ._client import AsyncClient, Client, adiscover, discover
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
    RateLimitError,
    ResponseTooLargeError,
    StreamError,
    StructuredOutputError,
)
from ._models import ChatResponse, Message, ModelInfo, ToolCall
from ._retry import set_instant_retries
from ._streaming import AsyncChatStream, ChatStream
from ._tools import tool_schema
from ._version import __version__

logging.getLogger("lmlink").addHandler(logging.NullHandler())

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncChatStream",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "ChatResponse",
    "ChatStream",
    "Client",
    "ConfigurationError",
    "ContextLengthError",
    "DecodeError",
    "InternalServerError",
    "LMLinkError",
    "Message",
    "ModelInfo",
    "ModelLoadingError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseTooLargeError",
    "RetryPolicy",
    "ServerInfo",
    "StreamError",
    "StructuredOutputError",
    "Timeout",
    "ToolCall",
    "__version__",
    "adiscover",
    "discover",
    "set_instant_retries",
    "tool_schema",
]
