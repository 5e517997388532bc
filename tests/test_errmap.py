"""Every server's error body becomes the right typed error."""

from __future__ import annotations

import pickle

import orjson
import pytest

import lmlink
from lmlink._errmap import error_from_payload, error_from_response

CASES = [
    # (id, status, body, headers, class, status_code)
    (
        "openai-nested",
        400,
        b'{"error":{"message":"bad temp","type":"invalid_request_error","param":"temperature","code":null}}',
        {},
        lmlink.BadRequestError,
        400,
    ),
    (
        "vllm-flat",
        400,
        b'{"object":"error","message":"This model\'s maximum context length is 4096 tokens. However, you requested 5000 tokens","type":"BadRequestError","param":null,"code":400}',
        {},
        lmlink.ContextLengthError,
        400,
    ),
    (
        "vllm-new-context",
        400,
        b'{"error":{"message":"This model\'s maximum context length is 2048 tokens. However, your request has 3000 input tokens.","type":"BadRequestError","param":"input_tokens","code":400}}',
        {},
        lmlink.ContextLengthError,
        400,
    ),
    ("string-401", 401, b'{"error":"Unauthorized"}', {}, lmlink.AuthenticationError, 401),
    (
        "tgi-validation",
        422,
        b'{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 5000","error_type":"validation"}',
        {},
        lmlink.ContextLengthError,
        422,
    ),
    (
        "tgi-overloaded",
        429,
        b'{"error":"Model is overloaded","error_type":"overloaded"}',
        {},
        lmlink.RateLimitError,
        429,
    ),
    ("fastapi-detail", 401, b'{"detail":"Invalid API key"}', {}, lmlink.AuthenticationError, 401),
    ("tgi-empty-401", 401, b"", {}, lmlink.AuthenticationError, 401),
    ("mlx-text-404", 404, b"Not Found", {}, lmlink.NotFoundError, 404),
    ("llamacpp-500-text", 500, b"Internal Server Error", {}, lmlink.InternalServerError, 500),
    (
        "llamacpp-500-parse",
        500,
        b'{"error":{"code":500,"message":"[json.exception.parse_error.101] parse error at line 1","type":"server_error"}}',
        {},
        lmlink.BadRequestError,
        500,
    ),
    (
        "llamacpp-context",
        400,
        b'{"error":{"code":400,"message":"request (300 tokens) exceeds the available context size (256 tokens), try increasing it","type":"exceed_context_size_error","n_prompt_tokens":300,"n_ctx":256}}',
        {},
        lmlink.ContextLengthError,
        400,
    ),
    (
        "llamacpp-loading",
        503,
        b'{"error":{"message":"Loading model","type":"unavailable_error","code":503}}',
        {},
        lmlink.ModelLoadingError,
        503,
    ),
    (
        "localai-loading",
        503,
        b'{"error":{"code":"model_loading","message":"model is loading","type":"model_loading"},"loading":{"progress":0.4}}',
        {"retry-after": "2"},
        lmlink.ModelLoadingError,
        503,
    ),
    (
        "ollama-busy",
        503,
        b'{"error":{"message":"server busy, please try again.  maximum pending requests exceeded","type":"api_error","param":null,"code":null}}\n',
        {},
        lmlink.OverloadedError,
        503,
    ),
    ("ollama-403-empty", 403, b"", {}, lmlink.PermissionDeniedError, 403),
    (
        "ollama-model",
        404,
        b'{"error":{"message":"model \'x\' not found","type":"not_found_error","param":null,"code":null}}',
        {},
        lmlink.NotFoundError,
        404,
    ),
    (
        "lmstudio-context",
        400,
        b'{"error":"The number of tokens to keep from the initial prompt is greater than the context length (n_keep: 13055>= n_ctx: 4096)"}',
        {},
        lmlink.ContextLengthError,
        400,
    ),
    (
        "llama-cpp-python-context",
        400,
        b'{"error":{"message":"Requested tokens (600) exceed context window of 512","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}',
        {},
        lmlink.ContextLengthError,
        400,
    ),
    (
        "openai-429",
        429,
        b'{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}',
        {"retry-after-ms": "1500"},
        lmlink.RateLimitError,
        429,
    ),
    ("bad-gateway-html", 502, b"<html>Bad Gateway</html>", {}, lmlink.InternalServerError, 502),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "code"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_error_bodies_map_to_classes(
    status: int, body: bytes, headers: dict[str, str], cls: type, code: int
) -> None:
    """Each captured body shape lands in its class with status, body and message."""
    err = error_from_response(status, headers, body)
    assert type(err) is cls
    assert err.status_code == code
    assert len(err.body) <= 500
    assert str(status) in str(err)


def test_rate_limit_message_names_status_and_kind() -> None:
    """A 429 message says "429" and "rate limit" (as the Go client's did)."""
    err = error_from_response(429, {}, b"slow down")
    assert "429" in str(err)
    assert "rate limit" in str(err)


def test_overloaded_message_names_status_and_kind() -> None:
    """A 503 message says "503" and "overloaded"."""
    err = error_from_response(503, {}, b"")
    assert "503" in str(err)
    assert "overloaded" in str(err)
    loading = error_from_response(503, {}, b'{"error":{"message":"Loading model"}}')
    assert "503" in str(loading)
    assert "overloaded" in str(loading)


def test_retry_after_is_read_from_headers() -> None:
    """retry-after-ms wins over Retry-After; both end up in .retry_after."""
    assert error_from_response(429, {"retry-after": "3"}, b"").retry_after == 3.0
    err = error_from_response(429, {"retry-after-ms": "250", "retry-after": "3"}, b"")
    assert err.retry_after == 0.25


def test_long_body_is_clipped() -> None:
    """The kept body is at most 500 characters."""
    err = error_from_response(500, {}, b"x" * 5000)
    assert len(err.body) == 500
    assert err.body.endswith("...")


def test_redaction_hides_an_echoed_key() -> None:
    """A server echoing the API key back never puts it in the message or body."""
    key = "sk-secret-123456"
    body = orjson.dumps({"error": {"message": f"Invalid key {key}", "type": "auth"}})
    err = error_from_response(401, {}, body, redact=lambda t: t.replace(key, "***"))
    assert key not in str(err)
    assert key not in err.body
    assert key not in repr(err)


@pytest.mark.parametrize(
    ("payload", "cls"),
    [
        ({"error": {"message": "boom", "http_status_code": 422}}, lmlink.BadRequestError),
        ({"error": "Model is overloaded", "error_type": "overloaded"}, lmlink.OverloadedError),
        (
            {"error": {"code": "server_error", "message": "x", "type": "server_error"}},
            lmlink.APIStatusError,
        ),
        (
            {
                "error": {
                    "message": "The input (300 tokens) is longer than the model's context length (256 tokens).",
                    "object": "error",
                    "code": 400,
                }
            },
            lmlink.ContextLengthError,
        ),
        (
            {"error": "Unexpected endpoint or method. (POST /chat/completions)"},
            lmlink.NotFoundError,
        ),
    ],
    ids=["tgi-inband", "tgi-overloaded", "localai-stream", "sglang-context", "lmstudio-200"],
)
def test_in_band_payloads(payload: dict[str, object], cls: type) -> None:
    """Error objects arriving on a 200 or inside a stream are classified too."""
    err = error_from_payload(payload)
    assert err is not None
    assert isinstance(err, cls)


def test_non_errors_are_not_errors() -> None:
    """Ordinary chunks and bodies are not mistaken for errors."""
    assert error_from_payload({"choices": [], "error": None}) is None
    assert error_from_payload([1, 2]) is None


@pytest.mark.parametrize(
    "cls",
    [c for c in vars(lmlink).values() if isinstance(c, type) and issubclass(c, lmlink.LMLinkError)],
    ids=lambda c: c.__name__,
)
def test_every_error_pickles(cls: type[lmlink.LMLinkError]) -> None:
    """Every error class survives pickling with its message and attributes."""
    err = cls("went wrong", status_code=503, body="b", retry_after=1.5)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert str(back) == "went wrong"
    assert back.__dict__ == err.__dict__


def test_stream_variants_pickle_and_match_both_classes() -> None:
    """An in-stream context error is both a StreamError and a ContextLengthError, and pickles."""
    from lmlink._errors import stream_variant

    cls = stream_variant(lmlink.ContextLengthError)
    err = cls("too long", status_code=400, partial=lmlink.ChatResponse(content="ab"))
    assert isinstance(err, lmlink.StreamError)
    assert isinstance(err, lmlink.ContextLengthError)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert back.partial.content == "ab"
