"""One chat call's plan, pure: what to send, and what to change when the server says no.

Servers disagree about ``response_format``: llama-cpp-python wants
``{"type": "json_object", "schema": …}`` and answers the OpenAI form with a 500, TGI wants
``{"type": "json", "value": …}``, LM Studio refuses ``json_object``, mlx-lm ignores it all;
some proxies refuse ``stream_options`` or parameters they don't know. A :class:`ChatPlan`
starts from what the client has learned about the endpoint and model
(:class:`Capabilities`), falls back to the next known form when a request is refused,
and records what worked. When the server cannot constrain the output, the schema goes into
a system message, and the answer is validated either way; an answer that does not validate
is asked for again (``structured_retries`` times) with the validation errors.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from . import _json
from ._errors import (
    APIStatusError,
    BadRequestError,
    ContextLengthError,
    StructuredOutputError,
)
from ._log import log
from ._models import ChatResponse
from ._structured import OutputSpec
from ._wire import build_chat_body

if TYPE_CHECKING:
    from ._tools import ToolSet

__all__ = ["Capabilities", "ChatPlan", "ChatSpec", "reasoning_params"]


# response_format forms, most specific first. "prompt" sends no response_format at all and
# puts the schema in a system message; validation and re-asking still apply.
SCHEMA_FORMS = ("json_schema", "json_object_schema", "value", "json_object", "prompt")
JSON_FORMS = ("json_object", "json_schema_any", "prompt")

_REJECT_STATUSES = frozenset({400, 415, 422, 500, 501})
# A 500 is a refusal only when it says so (llama-cpp-python turns a pydantic validation
# error into one); otherwise it is a crash ("model runner has unexpectedly stopped"), and
# re-sending a changed request, or learning from it, would be wrong.
_REFUSAL = re.compile(
    r"unsupported|not supported|unknown|unrecogni[sz]ed|invalid|not (?:permitted|allowed)"
    r"|validation error|should be|must be|failed to (?:parse|deserialize)|unexpected (?:field"
    r"|argument|keyword|param)|extra (?:field|input)"
)
_FORMAT_WORDS = re.compile(r"response_format|json|schema|grammar|\bformat\b")
# A refusal of the form's type (remembered for the endpoint), as opposed to one of this
# schema's content, such as vLLM's "features not supported by xgrammar" (not remembered).
_FORM_TYPE = re.compile(
    r"response_format\.type|type must be|must be one of|missing field|unknown variant"
    r"|json_schema|json_object|should be 'text'"
)


def _mentions(text: str, name: str) -> bool:
    """``name`` appears in ``text`` as a whole word: "stop" is not in "stopped"."""
    return re.search(rf"(?<![a-z0-9_]){re.escape(name)}(?![a-z0-9_])", text) is not None


# Where to start for a server whose kind is known (server_info()), to save a refusal:
# (kind, schema wanted) -> form. Others start with the OpenAI form.
_FIRST_FORM = {
    ("llama-cpp-python", True): "json_object_schema",
    ("tgi", True): "value",
    ("lmstudio", False): "json_schema_any",
}


class Capabilities:
    """What lmlink has learned about one endpoint and model, for the client's life."""

    __slots__ = ("dropped", "json_form", "kind", "schema_form", "stream_options")

    def __init__(self, kind: str | None = None) -> None:
        self.schema_form: str | None = None
        self.json_form: str | None = None
        self.stream_options = True
        self.dropped: set[str] = set()
        self.kind = kind

    def as_dict(self) -> dict[str, Any]:
        """A plain summary (for ``server_info()``)."""
        return {
            "schema_form": self.schema_form,
            "json_form": self.json_form,
            "stream_options": self.stream_options,
            "dropped_params": sorted(self.dropped),
        }


class CapabilityStore:
    """Capabilities per (endpoint, model), shared by every call of one client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], Capabilities] = {}
        self.kinds: dict[str, str] = {}

    def get(self, endpoint: str, model: str) -> Capabilities:
        key = (endpoint, model)
        found = self._by_key.get(key)
        if found is None:
            with self._lock:
                found = self._by_key.setdefault(key, Capabilities(kind=self.kinds.get(endpoint)))
        return found

    def set_kind(self, endpoint: str, kind: str) -> None:
        with self._lock:
            self.kinds[endpoint] = kind
            for (e, _), caps in self._by_key.items():
                if e == endpoint:
                    caps.kind = kind

    def for_endpoint(self, endpoint: str) -> dict[str, dict[str, Any]]:
        return {m: c.as_dict() for (e, m), c in self._by_key.items() if e == endpoint}


class ChatSpec:
    """Everything a caller asked for in one chat call, already normalised."""

    __slots__ = (  # noqa: RUF023 (the fields' order)
        "model",
        "messages",
        "temperature",
        "max_tokens",
        "response_format",
        "output",
        "tools",
        "tool_choice",
        "reasoning",
        "extra",
    )

    def __init__(
        self,
        model: str,
        messages: list[Any],
        temperature: float | None = None,
        max_tokens: int | None = None,
        response_format: Any = None,
        output: OutputSpec | None = None,
        tools: ToolSet | None = None,
        tool_choice: Any = None,
        reasoning: Any = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.messages = messages
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.response_format = response_format
        self.output = output
        self.tools = tools
        self.tool_choice = tool_choice
        self.reasoning = reasoning
        self.extra: Mapping[str, Any] = {} if extra is None else extra


_EFFORTS = frozenset({"minimal", "low", "medium", "high", "max", "xhigh"})


def reasoning_params(reasoning: Any, kind: str | None) -> dict[str, Any]:
    """Request fields for ``reasoning=`` on a server of ``kind`` (None: not known).

    ``False``/``"off"`` turns thinking off, ``True``/``"on"`` on, an effort word
    (``"low"``, ``"medium"``, ``"high"``) sets the effort where the server has one.
    """
    if reasoning is None:
        return {}
    if reasoning in (False, "off", "none"):
        level: str | None = None
        on = False
    elif reasoning in (True, "on"):
        level, on = None, True
    elif isinstance(reasoning, str) and reasoning in _EFFORTS:
        level, on = reasoning, True
    else:
        from ._errors import ConfigurationError

        raise ConfigurationError(
            f"reasoning must be None, True/False, 'on'/'off' or an effort "
            f"({', '.join(sorted(_EFFORTS))}), not {reasoning!r}"
        )
    toggle = {"chat_template_kwargs": {"enable_thinking": on}}
    if kind in ("ollama", "openai"):
        effort = level or ("medium" if on else "none")
        if kind == "openai" and effort == "none":
            effort = "minimal"
        return {"reasoning_effort": effort}
    if kind == "lmstudio":
        return {"reasoning_effort": level or ("medium" if on else "low")}
    if kind in ("llamacpp", "mlx", "localai"):
        return toggle
    if kind in ("tgi", "llama-cpp-python"):
        log.debug("lmlink: %s has no per-request reasoning control; reasoning= ignored", kind)
        return {}
    out: dict[str, Any] = dict(toggle)
    if level is not None:
        out["reasoning_effort"] = level
    return out


class ChatPlan:
    """The requests of one chat call, adapting to refusals and re-asking invalid output."""

    __slots__ = (
        "_form",
        "_forms",
        "_learn",
        "_params",
        "_reasks",
        "caps",
        "errors",
        "messages",
        "reasked",
        "spec",
        "stream",
    )

    def __init__(
        self,
        spec: ChatSpec,
        caps: Capabilities,
        *,
        stream: bool,
        reasks: int,
    ) -> None:
        self.spec = spec
        self.reasked = ""  # why the last answer was asked for again
        self.caps = caps
        self.stream = stream
        self.messages = spec.messages
        self.errors: list[str] = []
        self._reasks = reasks
        self._learn = True  # whether the form that works may be remembered for later calls
        self._params = {**reasoning_params(spec.reasoning, caps.kind), **spec.extra}
        rf = spec.response_format
        output = spec.output
        if rf is None:
            self._forms: tuple[str, ...] = ()
        elif output is not None and not output.any_json:
            self._forms = SCHEMA_FORMS
        elif output is not None:  # any JSON value: "json", {"type": "json_object"}
            self._forms = JSON_FORMS
        else:
            self._forms = ("as_given",)
        learned = caps.schema_form if self._forms is SCHEMA_FORMS else caps.json_form
        if learned is None and caps.kind is not None:
            learned = _FIRST_FORM.get((caps.kind, self._forms is SCHEMA_FORMS))
        self._form = self._forms.index(learned) if learned in self._forms else 0

    @property
    def form(self) -> str | None:
        """The response_format form this request uses (None without one)."""
        return self._forms[self._form] if self._forms else None

    def body(self) -> bytes:
        """The JSON body of the next request."""
        spec = self.spec
        extra = {k: v for k, v in self._params.items() if k not in self.caps.dropped}
        if spec.tools is not None:
            extra["tools"] = spec.tools.definitions
        if spec.tool_choice is not None:
            extra["tool_choice"] = spec.tool_choice
        messages = self.messages
        form = self.form
        if form == "prompt" or (form == "json_object" and self._forms is SCHEMA_FORMS):
            instruction = self._schema_instruction()
            first = messages[0] if messages else None
            if (
                first is not None
                and first.get("role") == "system"
                and isinstance(first.get("content"), str)
            ):
                # One system message: Mistral- and Gemma-style templates refuse two.
                text = f"{first['content']}\n\n{instruction['content']}".strip()
                messages = [{**first, "content": text}, *messages[1:]]
            else:
                messages = [instruction, *messages]
        body = build_chat_body(
            spec.model,
            messages,
            stream=self.stream,
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
            response_format=self._wire_format(form),
            extra=extra,
        )
        if self.stream and not self.caps.stream_options:
            body = body.replace(b',"stream_options":{"include_usage":true}', b"", 1)
        return body

    def _schema(self) -> Any:
        output = self.spec.output
        if output is None or output.any_json:
            return {"type": "object"}
        return output.wire_schema()

    def _wire_format(self, form: str | None) -> Any:
        if form is None or form == "prompt":
            return None
        if form == "as_given":
            from ._wire import response_format_payload

            return response_format_payload(self.spec.response_format)
        schema = self._schema()
        name = self.spec.output.name if self.spec.output is not None else "response"
        if form == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}
        if form == "json_object_schema":
            return {"type": "json_object", "schema": schema}
        if form == "value":
            return {"type": "json", "value": schema}
        if form == "json_schema_any":
            return {"type": "json_schema", "json_schema": {"name": "object", "schema": schema}}
        return {"type": "json_object"}

    def _schema_instruction(self) -> dict[str, Any]:
        text = "Reply with JSON only, no prose and no code fences."
        if self.spec.output is not None and not self.spec.output.any_json:
            schema = _json.dumps(self._schema()).decode()
            text = (
                f"Reply with one JSON value matching this JSON schema, and nothing else: {schema}"
            )
        return {"role": "system", "content": text}

    def adapt(self, exc: APIStatusError) -> bool:
        """After a refusal: change the request and return True, or False to give up."""
        if isinstance(exc, ContextLengthError):
            return False
        status = exc.status_code
        in_band = status in (0, 200) and isinstance(exc, BadRequestError)
        if status not in _REJECT_STATUSES and not in_band:
            return False
        text = f"{exc.message} {exc.body}".lower()
        if status == 500 and not _REFUSAL.search(text):
            return False
        caps = self.caps
        if (
            self.stream
            and caps.stream_options
            and (_mentions(text, "stream_options") or _mentions(text, "include_usage"))
        ):
            caps.stream_options = False
            log.info("lmlink: the server refused stream_options; sending without it")
            return True
        for param in self._params:
            if param not in caps.dropped and _mentions(text, param):
                caps.dropped.add(param)
                log.info("lmlink: the server refused %r; sending without it", param)
                return True
        if (
            self._forms
            and self._form + 1 < len(self._forms)
            and self.form != "as_given"
            and _FORMAT_WORDS.search(text)
        ):
            old = self.form
            self._form += 1
            if _FORM_TYPE.search(text):
                self._remember()  # the form itself was refused: the same goes for every call
            else:
                self._learn = False  # this schema only (a feature the grammar engine lacks)
            log.info(
                "lmlink: the server refused response_format form %s; trying %s", old, self.form
            )
            return True
        return False

    def _remember(self) -> None:
        if self._forms is SCHEMA_FORMS:
            self.caps.schema_form = self.form
        elif self._forms is JSON_FORMS:
            self.caps.json_form = self.form

    def accept(self, resp: ChatResponse) -> bool:
        """Validate the answer into ``resp.parsed``. False means: ask again (the plan's
        messages now carry the correction); raises StructuredOutputError when out of tries."""
        if self._learn:
            self._remember()
        output = self.spec.output
        if output is None:
            return True
        try:
            resp.parsed = output.parse(resp.content)
        except StructuredOutputError as exc:
            self.errors.extend(exc.errors)
            if self._reasks <= 0 or self.stream:
                # The client blanks its secrets out of it on the way out (Attempts.accept).
                raise StructuredOutputError(
                    exc.message, raw=resp.content, errors=list(self.errors)
                ) from None
            self._reasks -= 1
            self.reasked = exc.message
            self.messages = [
                *self.messages,
                {"role": "assistant", "content": resp.content},
                {
                    "role": "user",
                    "content": "That answer does not match the required JSON schema: "
                    f"{'; '.join(exc.errors)}. Reply again with only the corrected JSON.",
                },
            ]
            return False
        return True
