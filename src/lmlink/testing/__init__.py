"""A fake OpenAI-compatible LLM server for tests: real HTTP on 127.0.0.1, scripted answers,
the wire quirks of Ollama, vLLM, llama.cpp, SGLang, TGI and mlx-lm, injectable faults, and
embeddings (a fixed vector per text, :class:`EmbedSettings` for the servers' differences).

Standalone: it imports nothing else from lmlink, only the standard library (and orjson when
present), so any client can be tested against it.

Example::

    from lmlink.testing import FakeServer, Reply

    with FakeServer(model="fake-model") as srv:
        srv.enqueue(Reply(content="Hello"), Reply.error(503, retry_after=1))
        ...  # point a client at srv.url ("http://127.0.0.1:PORT/v1")
        assert srv.requests[0].json["messages"][-1]["role"] == "user"

The pytest plugin (``lmlink.testing._pytest``) adds a ``lmlink_server`` fixture, and
``python -m lmlink.testing`` runs a server in the foreground, answering schema requests
with JSON of the asked shape (``responder=sensible_reply``).
"""

from __future__ import annotations

from ._answers import sensible_reply
from ._embeddings import EmbedSettings, embedding_of
from ._http import RecordedRequest, Stats
from ._personas import PERSONAS, Persona
from ._replies import CANNED_REPLY, DIALECTS, Faults, Reply
from ._server import FakeServer, Responder
from ._shapes import SHAPES, ServerShape, ShapeModel, ShapeServer, SimResult, simulate
from ._tokenize import chat_prompt, fake_tokens

__all__ = [
    "PERSONAS",
    "Persona",
    "CANNED_REPLY",
    "DIALECTS",
    "EmbedSettings",
    "FakeServer",
    "Faults",
    "RecordedRequest",
    "Reply",
    "Responder",
    "SHAPES",
    "ServerShape",
    "ShapeModel",
    "ShapeServer",
    "SimResult",
    "Stats",
    "chat_prompt",
    "embedding_of",
    "fake_tokens",
    "sensible_reply",
    "simulate",
]
