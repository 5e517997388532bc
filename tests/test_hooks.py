"""Event hooks (``event_hooks={"request": [...], "response": [...]}``, httpx's shape): every
HTTP attempt is shown to them, credentials blanked out; what they raise reaches the caller;
sync and async, streamed and plain, through real HTTP against the fake server."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest

import lmlink
from apis import API, AsyncAPI
from lmlink.testing import FakeServer, Reply


class Recorder:
    """Hooks that keep what they saw."""

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.responses: list[Any] = []

    def on_request(self, request: Any) -> None:
        self.requests.append(request)

    def on_response(self, response: Any) -> None:
        self.responses.append(response)

    @property
    def hooks(self) -> dict[str, list[Callable[[Any], Any]]]:
        return {"request": [self.on_request], "response": [self.on_response]}


@pytest.fixture(autouse=True)
def _instant_retries() -> Any:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


@contextlib.contextmanager
def _no_warnings() -> Iterator[None]:
    """Fails if a warning (a coroutine never awaited, say) is raised inside, or when the
    garbage it leaves is collected."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
        gc.collect()
    assert [str(w.message) for w in caught] == []


def _server_info(api: API) -> lmlink.ServerInfo:
    if isinstance(api, AsyncAPI):
        return api.run(api.client.server_info())  # type: ignore[no-any-return]
    return api.client.server_info()


def test_request_hook_sees_what_is_sent(make_api: Callable[..., API], server: FakeServer) -> None:
    """The request hook gets the method, URL, headers and body bytes the server received,
    with the API key blanked out."""
    seen = Recorder()
    api = make_api(api_key="sk-secret-key", event_hooks=seen.hooks)
    api.chat("hello hooks")
    (request,) = seen.requests
    (received,) = server.requests
    assert request.method == "POST"
    assert request.url == server.url + "/chat/completions"
    assert request.body == received.body
    assert request.content == received.body
    assert b"hello hooks" in request.body
    assert request.headers["Authorization"] == "Bearer ***"
    assert request.headers["authorization"] == "Bearer ***"
    assert "sk-secret-key" not in repr(dict(request.headers))
    assert received.headers["authorization"] == "Bearer sk-secret-key"
    assert request.headers["content-type"] == "application/json"


def test_per_call_credentials_are_blanked_too(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """A key given in a call's own headers= is blanked out for the hooks as well."""
    seen = Recorder()
    api = make_api(event_hooks=seen.hooks)
    api.chat("hi", headers={"X-Api-Key": "per-call-secret", "X-Trace": "t1"})
    (request,) = seen.requests
    assert request.headers["x-api-key"] == "***"
    assert request.headers["X-Trace"] == "t1"
    assert server.requests[0].headers["x-api-key"] == "per-call-secret"


def test_response_hook_sees_the_head(make_api: Callable[..., API], server: FakeServer) -> None:
    """The response hook gets the status, the headers, the time to the head as a timedelta
    and the request it answers."""
    seen = Recorder()
    api = make_api(event_hooks=seen.hooks)
    api.chat("hi")
    (response,) = seen.responses
    assert response.status_code == 200
    assert not response.is_error
    assert response.headers["Content-Type"].startswith("application/json")
    assert isinstance(response.elapsed, timedelta)
    assert response.elapsed >= timedelta(0)
    assert response.request is seen.requests[0]


def test_every_attempt_is_shown(make_api: Callable[..., API], server: FakeServer) -> None:
    """Retries are attempts of their own: each is shown to both hooks, in order."""
    seen = Recorder()
    api = make_api(event_hooks=seen.hooks)
    server.enqueue(Reply.error(503, retry_after=0), Reply.error(429, retry_after=0), "ok")
    assert api.chat("hi").content == "ok"
    assert len(seen.requests) == 3
    assert [r.status_code for r in seen.responses] == [503, 429, 200]
    assert seen.responses[0].is_error


def test_streams_are_shown(make_api: Callable[..., API], server: FakeServer) -> None:
    """A stream's request and its event-stream response head go through the hooks."""
    seen = Recorder()
    api = make_api(event_hooks=seen.hooks)
    server.enqueue(Reply(content="one two three", chunk_chars=3))
    deltas, _ = api.stream("hi")
    assert "".join(deltas) == "one two three"
    (request,) = seen.requests
    assert b'"stream":true' in request.body.replace(b" ", b"")
    (response,) = seen.responses
    assert response.headers["content-type"].startswith("text/event-stream")


def test_stream_retried_before_output(make_api: Callable[..., API], server: FakeServer) -> None:
    """A stream refused with a 503 and then served shows both attempts."""
    seen = Recorder()
    api = make_api(event_hooks=seen.hooks)
    server.enqueue(Reply.error(503, retry_after=0), Reply(content="fine"))
    deltas, _ = api.stream("hi")
    assert "".join(deltas) == "fine"
    assert [r.status_code for r in seen.responses] == [503, 200]


def test_models_and_server_info_are_shown(make_api: Callable[..., API], server: FakeServer) -> None:
    """The other calls' requests (GETs included) go through the hooks too."""
    seen = Recorder()
    api = make_api(event_hooks=seen.hooks)
    assert [m.id for m in api.models()] == ["fake-model"]
    assert seen.requests[0].method == "GET"
    assert seen.requests[0].url == server.url + "/models"
    assert seen.requests[0].body == b""
    _server_info(api)
    urls = [r.url for r in seen.requests[1:]]
    assert server.url + "/models" in urls
    assert len(seen.responses) == len(seen.requests)


def test_request_hook_exception_propagates_and_nothing_is_sent(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """An exception raised by a request hook reaches the caller as is; no request leaves."""

    def refuse(request: Any) -> None:
        raise PermissionError("not today")

    api = make_api(event_hooks={"request": [refuse]})
    with pytest.raises(PermissionError, match="not today"):
        api.chat("hi")
    with pytest.raises(PermissionError):
        api.stream("hi")
    assert server.requests == []


def test_response_hook_exception_propagates(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """An exception raised by a response hook reaches the caller as is, and is not retried;
    the client stays usable."""
    calls: list[int] = []

    def check(response: Any) -> None:
        calls.append(response.status_code)
        if len(calls) == 1:
            raise ValueError("bad answer")

    api = make_api(event_hooks={"response": [check]})
    with pytest.raises(ValueError, match="bad answer"):
        api.chat("hi")
    assert len(server.requests) == 1
    assert api.chat("again").content
    assert calls == [200, 200]


def test_lmlink_error_from_a_hook_is_retried_like_the_servers(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """An lmlink error a hook raises takes the same path as the same error from the
    transport: a connection reset before sending is retried."""
    attempts: list[Any] = []

    def flaky(request: Any) -> None:
        attempts.append(request)
        if len(attempts) == 1:
            raise lmlink.APIConnectionError("reset by a hook", reason="reset")

    api = make_api(event_hooks={"request": [flaky]})
    assert api.chat("hi").content
    assert len(attempts) == 2
    assert len(server.requests) == 1


def test_async_client_awaits_async_hooks(server: FakeServer) -> None:
    """AsyncClient accepts async and plain hooks together, in the order given."""
    order: list[str] = []

    async def async_request(request: Any) -> None:
        await asyncio.sleep(0)
        order.append(f"async request {request.method}")

    def plain_request(request: Any) -> None:
        order.append(f"plain request {request.method}")

    async def async_response(response: Any) -> None:
        await asyncio.sleep(0)
        order.append(f"async response {response.status_code}")

    async def go() -> None:
        hooks: dict[str, list[Callable[[Any], Any]]] = {
            "request": [async_request, plain_request],
            "response": [async_response],
        }
        async with lmlink.AsyncClient(
            endpoint=server.url, model="fake-model", event_hooks=hooks
        ) as client:
            await client.chat("hi")
            async with client.stream("hi") as s:
                async for _ in s:
                    pass

    asyncio.run(go())
    assert order == [
        "async request POST",
        "plain request POST",
        "async response 200",
        "async request POST",
        "plain request POST",
        "async response 200",
    ]


def test_async_hook_exception_propagates(server: FakeServer) -> None:
    """An async hook's exception reaches the async caller as is."""

    async def refuse(request: Any) -> None:
        raise LookupError("async no")

    async def go() -> None:
        async with lmlink.AsyncClient(
            endpoint=server.url, model="fake-model", event_hooks={"request": [refuse]}
        ) as client:
            await client.chat("hi")

    with pytest.raises(LookupError, match="async no"):
        asyncio.run(go())
    assert server.requests == []


def test_blocking_client_refuses_async_hooks(server: FakeServer) -> None:
    """An async hook could never be awaited by the blocking client: it is refused at once."""

    async def hook(request: Any) -> None:
        pass

    with pytest.raises(lmlink.ConfigurationError, match="AsyncClient"):
        lmlink.Client(endpoint=server.url, event_hooks={"request": [hook]})


@pytest.mark.parametrize(
    ("hooks", "match"),
    [
        ({"before": [print]}, "'request' and 'response'"),
        ({"request": print}, "list of callables"),
        ({"response": ["not callable"]}, "callables"),
        ([print], "must be a dict"),
    ],
    ids=["unknown-kind", "not-a-list", "not-callable", "not-a-dict"],
)
def test_bad_event_hooks_are_refused(server: FakeServer, hooks: Any, match: str) -> None:
    """A malformed event_hooks= is a ConfigurationError naming what is wrong."""
    with pytest.raises(lmlink.ConfigurationError, match=match):
        lmlink.Client(endpoint=server.url, event_hooks=hooks)


def test_empty_hooks_change_nothing(make_api: Callable[..., API], server: FakeServer) -> None:
    """event_hooks with empty lists behaves like no hooks at all."""
    api = make_api(event_hooks={"request": [], "response": []})
    assert api.chat("hi").content
    assert len(server.requests) == 1


def test_embed_is_shown(make_api: Callable[..., API], server: FakeServer) -> None:
    """embed() requests go through the hooks like chat's."""
    seen = Recorder()
    api = make_api(event_hooks=seen.hooks)
    if isinstance(api, AsyncAPI):
        api.run(api.client.embed(["a", "b"]))
    else:
        api.client.embed(["a", "b"])
    assert seen.requests[0].url == server.url + "/embeddings"
    assert b'"input"' in seen.requests[0].body
    assert [r.status_code for r in seen.responses] == [200]


def test_token_count_requests_are_shown() -> None:
    """count_tokens() sends its requests through the hooks too (llama.cpp's /tokenize)."""
    seen = Recorder()
    with FakeServer(model="fake-model", persona="llamacpp") as server:
        client = lmlink.Client(endpoint=server.url, model="fake-model", event_hooks=seen.hooks)
        with client:
            assert client.count_tokens("Hello world") == 3
        posted = [r for r in server.requests if r.method == "POST"]
    shown = [r for r in seen.requests if r.method == "POST"]
    assert [r.url.rsplit("/", 1)[-1] for r in shown] == ["tokenize"]
    assert shown[-1].body == posted[-1].body
    assert len(seen.responses) == len(seen.requests)


def test_blocking_client_refuses_a_hook_that_returns_an_awaitable(server: FakeServer) -> None:
    """A plain function handing back a coroutine (a lambda around an async hook) would never
    run in the blocking client: the call fails with a ConfigurationError, nothing is sent,
    and no "never awaited" warning is left behind."""
    ran: list[Any] = []

    async def hook(request: Any) -> None:
        ran.append(request)

    client = lmlink.Client(
        endpoint=server.url,
        model="fake-model",
        event_hooks={"request": [lambda r: hook(r)]},  # noqa: PLW0108 (the point)
    )
    with _no_warnings(), pytest.raises(lmlink.ConfigurationError, match="AsyncClient"):
        client.chat("hi")
    assert ran == []
    assert server.requests == []
    client.close()


def test_blocking_client_refuses_a_response_hook_that_returns_an_awaitable(
    server: FakeServer,
) -> None:
    """The same for a response hook: the call fails instead of the hook being skipped."""

    async def hook(response: Any) -> None:
        pass

    client = lmlink.Client(
        endpoint=server.url,
        model="fake-model",
        event_hooks={"response": [lambda r: hook(r)]},  # noqa: PLW0108 (the point)
    )
    with _no_warnings(), pytest.raises(lmlink.ConfigurationError, match="coroutine"):
        client.chat("hi")
    client.close()


def test_cookie_is_blanked(make_api: Callable[..., API], server: FakeServer) -> None:
    """A session cookie is a credential too: the hooks see it blanked, the server gets it."""
    seen = Recorder()
    api = make_api(event_hooks=seen.hooks)
    api.chat("hi", headers={"Cookie": "session=cookie-secret"})
    (request,) = seen.requests
    assert request.headers["cookie"] == "***"
    assert "cookie-secret" not in repr(request.headers)
    assert server.requests[0].headers["cookie"] == "session=cookie-secret"


@pytest.mark.parametrize(
    "name",
    ["X-Goog-Api-Key", "X-Auth-Token", "Ocp-Apim-Subscription-Key", "X-Session-Id", "X-Secret"],
)
def test_headers_named_as_credentials_are_blanked(
    make_api: Callable[..., API], server: FakeServer, name: str
) -> None:
    """A gateway's own key header is blanked for the hooks like Authorization; the server
    still gets it, and other headers are shown as sent."""
    seen = Recorder()
    api = make_api(event_hooks=seen.hooks)
    api.chat("hi", headers={name: "gateway-secret", "X-Trace": "t1"})
    (request,) = seen.requests
    assert request.headers[name] == "***"
    assert "gateway-secret" not in repr(request.headers)
    assert request.headers["X-Trace"] == "t1"
    assert server.requests[0].headers[name.lower()] == "gateway-secret"


def test_userinfo_in_the_endpoint_never_reaches_a_hook(
    make_api: Callable[..., API], server: FakeServer
) -> None:
    """user:password@ in the endpoint is sent as Basic auth: the hooks see neither in the
    URL nor in the header."""
    seen = Recorder()
    endpoint = server.url.replace("http://", "http://alice:pw-secret@")
    api = make_api(endpoint=endpoint, event_hooks=seen.hooks)
    api.chat("hi")
    (request,) = seen.requests
    assert request.url == server.url + "/chat/completions"
    assert request.headers["authorization"] == "Basic ***"
    assert "pw-secret" not in repr(request.headers) + request.url
    assert server.requests[0].headers["authorization"].startswith("Basic ")


def test_blocking_client_leaves_a_scheduled_task_alone(server: FakeServer) -> None:
    """A hook of the blocking client may schedule work on a loop of its own and return the
    task: the task is already running there, so the call goes on and the task runs."""
    loop = asyncio.new_event_loop()
    ran: list[str] = []

    async def record(url: str) -> None:
        ran.append(url)

    def hook(request: Any) -> Any:
        return loop.create_task(record(request.url))

    with lmlink.Client(
        endpoint=server.url, model="fake-model", event_hooks={"request": [hook]}
    ) as client:
        assert client.chat("hi").content
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    assert ran == [server.url + "/chat/completions"]
