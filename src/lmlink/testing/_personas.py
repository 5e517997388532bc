"""Server personas: what each real server accepts, rejects and reveals about itself.

``FakeServer(persona="lmstudio")`` answers like LM Studio where servers differ in ways a
client must adapt to: which ``response_format`` forms are accepted and
with what error the others are refused, whether ``stream_options`` or unknown parameters are
rejected, and how ``/v1/models``, ``GET /`` and the response headers give the server away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PERSONAS", "Persona", "Rejection"]


@dataclass(frozen=True)
class Rejection:
    """An error answer: status, body (bytes), content type."""

    status: int
    body: bytes
    content_type: str = "application/json"


def _json(obj: Any) -> bytes:
    import json

    return json.dumps(obj).encode()


@dataclass(frozen=True)
class Persona:
    """How one server kind behaves. ``formats`` lists the accepted response_format shapes:
    ``"json_schema"`` (OpenAI form), ``"json_object"``, ``"json_object_schema"``
    (llama-cpp-python's ``{"type": "json_object", "schema": …}``), ``"value"`` (TGI's
    ``{"type": "json"|"json_schema", "value": …}``), or ``"any"`` (ignored entirely)."""

    name: str
    owned_by: str | None
    formats: frozenset[str] = frozenset({"json_schema", "json_object"})
    rejects_stream_options: bool = False
    rejects_unknown: frozenset[str] = frozenset()
    headers: tuple[tuple[str, str], ...] = ()
    root_text: bytes | None = None
    models_extra: dict[str, Any] = field(default_factory=dict)

    def form_of(self, rf: Any) -> str | None:
        """The shape name of a request's response_format (None when absent)."""
        if not isinstance(rf, dict):
            return None
        kind = rf.get("type")
        if "value" in rf:
            return "value"
        if kind == "json_schema":
            return "json_schema" if isinstance(rf.get("json_schema"), dict) else "bad"
        if kind == "json_object":
            return "json_object_schema" if "schema" in rf else "json_object"
        if kind == "text":
            return "text"
        return "bad"

    def reject(self, body: dict[str, Any]) -> Rejection | None:
        """The error this server gives the request, or None if it takes it."""
        if self.rejects_stream_options and "stream_options" in body:
            return _unknown_param(self, "stream_options")
        for param in self.rejects_unknown:
            if param in body:
                return _unknown_param(self, param)
        form = self.form_of(body.get("response_format"))
        if form is None or form == "text" or "any" in self.formats:
            return None
        if form == "json_object_schema" and "json_object" in self.formats:
            return None  # llama.cpp reads an optional schema there too
        if form in self.formats:
            return None
        return _FORMAT_ERRORS.get(self.name, _generic_format_error)(form)


def _unknown_param(persona: Persona, param: str) -> Rejection:
    message = f"Unrecognized request argument supplied: {param}"
    return Rejection(
        400,
        _json(
            {
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": param,
                    "code": None,
                }
            }
        ),
    )


def _generic_format_error(form: str) -> Rejection:
    return Rejection(
        400,
        _json(
            {
                "error": {
                    "message": f"response_format {form} is not supported",
                    "type": "invalid_request_error",
                    "code": 400,
                }
            }
        ),
    )


def _llama_cpp_python(form: str) -> Rejection:
    # Its pydantic model has no json_schema type: the validation error becomes a 500.
    message = (
        "1 validation error for CreateChatCompletionRequest\nresponse_format.type\n  Input "
        "should be 'text' or 'json_object'"
    )
    return Rejection(
        500,
        _json(
            {
                "error": {
                    "message": message,
                    "type": "internal_server_error",
                    "param": None,
                    "code": None,
                }
            }
        ),
    )


def _tgi(form: str) -> Rejection:
    text = (
        "Failed to deserialize the JSON body into the target type: response_format: missing "
        "field `value` at line 1 column 120"
    )
    return Rejection(422, text.encode(), "text/plain; charset=utf-8")


def _lmstudio(form: str) -> Rejection:
    return Rejection(
        400, _json({"error": "'response_format.type' must be 'json_schema' or 'text'"})
    )


def _llamacpp(form: str) -> Rejection:
    message = 'response_format type must be one of "text" or "json_object", but got: ' + form
    return Rejection(
        400, _json({"error": {"code": 400, "message": message, "type": "invalid_request_error"}})
    )


_FORMAT_ERRORS = {
    "llama-cpp-python": _llama_cpp_python,
    "tgi": _tgi,
    "lmstudio": _lmstudio,
    "llamacpp": _llamacpp,
}

PERSONAS: dict[str, Persona] = {
    p.name: p
    for p in (
        Persona("openai", "system"),
        Persona("ollama", "library", root_text=b"Ollama is running"),
        Persona("vllm", "vllm", models_extra={"root": None, "max_model_len": 4096}),
        Persona(
            "llamacpp",
            "llamacpp",
            formats=frozenset({"json_schema", "json_object"}),
            headers=(("Server", "llama.cpp"),),
        ),
        Persona(
            "lmstudio",
            "organization_owner",
            formats=frozenset({"json_schema"}),
            headers=(("X-Powered-By", "Express"),),
        ),
        Persona("sglang", "sglang"),
        Persona("tgi", None, formats=frozenset({"value"})),
        Persona("localai", "localai"),
        Persona(
            "mlx",
            None,
            formats=frozenset({"any"}),
            headers=(("Server", "BaseHTTP/0.6 Python/3.12.4"),),
        ),
        Persona("llama-cpp-python", "me", formats=frozenset({"json_object"})),
        Persona(
            "strict-proxy",
            "proxy",
            rejects_stream_options=True,
            rejects_unknown=frozenset({"chat_template_kwargs", "reasoning_effort"}),
        ),
    )
}
