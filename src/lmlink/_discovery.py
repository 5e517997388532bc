"""Which server is that? Identification from what a server shows (pure), and the list of
places a local server usually listens.

``/v1/models`` ``owned_by`` says most of it (``vllm``, ``sglang``,
``llamacpp``, ``organization_owner`` = LM Studio, ``me`` = llama-cpp-python, ``library`` =
Ollama); TGI repeats the model id with ``created: 0``; mlx-lm has no ``owned_by`` and a
Python ``Server`` header; ``GET /`` answers "Ollama is running"; ``Server: llama.cpp`` and
``X-Powered-By: Express`` (LM Studio) give the rest away. Versions come from
``/api/version`` (Ollama), ``/version`` (vLLM) and ``/info`` (TGI).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from . import _json
from ._values import Record

__all__ = ["DEFAULT_PORTS", "KINDS", "Probe", "ServerInfo", "identify"]

#: Ollama, LM Studio, vLLM/llama-cpp-python, llama.cpp/LocalAI/mlx-lm, llama.cpp (new),
#: SGLang, TGI.
DEFAULT_PORTS = (11434, 1234, 8000, 8080, 9931, 30000, 3000)

KINDS = (
    "ollama",
    "vllm",
    "llamacpp",
    "lmstudio",
    "sglang",
    "tgi",
    "localai",
    "mlx",
    "llama-cpp-python",
    "openai",
    "unknown",
)

_OWNERS = {
    "vllm": "vllm",
    "sglang": "sglang",
    "llamacpp": "llamacpp",
    "organization_owner": "lmstudio",
    "me": "llama-cpp-python",
    "library": "ollama",
    "system": "openai",
    "openai": "openai",
    "openai-internal": "openai",
    "localai": "localai",
}

# Where each kind tells its version: (path under the origin, JSON key).
_VERSION_AT = {
    "ollama": ("/api/version", "version"),
    "vllm": ("/version", "version"),
    "tgi": ("/info", "version"),
}


class ServerInfo(Record):
    """What lmlink knows about a server.

    ``kind`` is one of ``ollama, vllm, llamacpp, lmstudio, sglang, tgi, localai, mlx,
    llama-cpp-python, openai, unknown``; ``capabilities`` holds what calls have learned so far
    per model (which ``response_format`` form works, whether ``stream_options`` is taken).
    """

    __slots__ = ("endpoint", "kind", "version", "models", "capabilities")  # noqa: RUF023

    def __init__(
        self,
        endpoint: str,
        kind: str = "unknown",
        version: str | None = None,
        models: list[str] | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.kind = kind
        self.version = version
        self.models: list[str] = [] if models is None else models
        self.capabilities: dict[str, Any] = {} if capabilities is None else capabilities


Answer = tuple[int, Mapping[str, str], bytes] | None


def _parse(body: bytes) -> Any:
    try:
        return _json.loads(body)
    except ValueError:
        return None


def identify(models: Answer, root: Answer) -> tuple[str, list[str]]:
    """The server kind and model ids from the answers to ``GET /models`` and ``GET /``."""
    ids: list[str] = []
    kind = "unknown"
    headers: Mapping[str, str] = {}
    if models is not None:
        status, headers, body = models
        payload = _parse(body) if status == 200 else None
        data = payload.get("data") if isinstance(payload, dict) else None
        if isinstance(data, list):
            entries = [d for d in data if isinstance(d, dict) and isinstance(d.get("id"), str)]
            ids = [d["id"] for d in entries]
            owners = {d.get("owned_by") for d in entries}
            for owner in owners:
                if isinstance(owner, str) and owner in _OWNERS:
                    kind = _OWNERS[owner]
                    break
            if kind == "unknown" and entries:
                first = entries[0]
                if first.get("created") == 0 and first.get("owned_by") == first["id"]:
                    kind = "tgi"
                elif "owned_by" not in first and "python" in headers.get("server", "").lower():
                    kind = "mlx"
            if kind == "unknown" and isinstance(payload, dict) and "models" in payload:
                kind = "llamacpp"
    server = headers.get("server", "").lower()
    if kind == "unknown":
        if "llama.cpp" in server:
            kind = "llamacpp"
        elif headers.get("x-powered-by", "").lower() == "express":
            kind = "lmstudio"
    if root is not None and root[0] == 200 and b"Ollama is running" in root[2]:
        kind = "ollama"
    return kind, ids


def version_probe(kind: str, endpoint: str) -> tuple[str, str] | None:
    """``(url, json key)`` where a server of ``kind`` tells its version, if it does."""
    where = _VERSION_AT.get(kind)
    if where is None:
        return None
    return origin_of(endpoint) + where[0], where[1]


def version_from(answer: Answer, key: str) -> str | None:
    """The version in a version probe's answer."""
    if answer is None or answer[0] != 200:
        return None
    payload = _parse(answer[2])
    value = payload.get(key) if isinstance(payload, dict) else None
    return str(value) if isinstance(value, (str, int, float)) else None


def origin_of(endpoint: str) -> str:
    """``scheme://host:port`` of an endpoint URL."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


class Probe:
    """The requests that identify one server, and the folding of their answers."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.models_url = endpoint + "/models"
        self.root_url = origin_of(endpoint) + "/"
        self.health_url = origin_of(endpoint) + "/health"

    def info(self, models: Answer, root: Answer) -> ServerInfo:
        kind, ids = identify(models, root)
        return ServerInfo(endpoint=self.endpoint, kind=kind, models=ids)

    @staticmethod
    def ready(models: Answer, health: Answer) -> bool:
        """A model list came back and ``/health``, where there is one, is not 503 (llama.cpp
        and SGLang list models before the model is loaded)."""
        if models is None or models[0] != 200 or not identify(models, None)[1]:
            return False
        return health is None or health[0] != 503
