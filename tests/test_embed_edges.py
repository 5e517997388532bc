"""Embeddings edges, pinned through real HTTP against the fake server.

Each test states the behaviour a user should get."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import lmlink
import lmlink.batch
from apis import API, AsyncAPI
from batch_helpers import write_jsonl
from lmlink.testing import EmbedSettings, FakeServer, Reply


@pytest.fixture(autouse=True)
def _instant_retries() -> Iterator[None]:
    lmlink.set_instant_retries(True)
    yield
    lmlink.set_instant_retries(False)


def _embed(api: API, *args: Any, **kwargs: Any) -> Any:
    if isinstance(api, AsyncAPI):
        return api.run(api.client.embed(*args, **kwargs))
    return api.client.embed(*args, **kwargs)


def _embed_requests(server: FakeServer) -> list[Any]:
    return [r for r in server.requests if r.path == "/v1/embeddings"]


@pytest.mark.parametrize("how", ["keyword", "extra_body"])
def test_input_given_twice_is_refused_before_sending(
    make_api: Callable[..., API], server: FakeServer, how: str
) -> None:
    """The texts are embed()'s first argument; an 'input' body field beside them would
    silently send other texts (today: sent, then a DecodeError about vector counts)."""
    api = make_api()
    extra: dict[str, Any] = (
        {"input": ["z", "y"]} if how == "keyword" else {"extra_body": {"input": ["z", "y"]}}
    )
    with pytest.raises(lmlink.ConfigurationError, match="input"):
        _embed(api, "a", **extra)
    assert _embed_requests(server) == []


def test_an_error_every_input_shares_is_not_split_to_single_items(
    server: FakeServer, tmp_path: Path
) -> None:
    """vLLM answers dimensions= for a model without matryoshka support with a 400 that
    no input causes: both halves of a split fail alike, so splitting further is waste."""
    message = (
        'Model "bge" does not support matryoshka representation, changing output '
        "dimensions will lead to poor results."
    )
    body = {"object": "error", "message": message, "type": "BadRequestError", "code": 400}
    server.enqueue_embeddings(*[Reply(status=400, body=body) for _ in range(200)])
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"d{i:03d}", "text": f"doc {i}"} for i in range(64)]
    )
    out = tmp_path / "out.jsonl"
    summary = lmlink.batch.run_embed(
        src, out, endpoint=server.url, model="fake-model", batch_size=32, dimensions=8
    )
    assert summary.ok == 0
    # Today: 126 requests (each group of 32 split down to 32 single requests).
    assert len(_embed_requests(server)) <= 8


def test_long_inputs_in_both_halves_are_still_isolated(server: FakeServer, tmp_path: Path) -> None:
    """Two too-long inputs, one in each half at the same place, give both halves the same
    refusal; it speaks of size, so it is not taken as the request's own: splitting goes
    on and the other 30 inputs get their vectors."""
    server.embed = EmbedSettings(fail_on="POISON")
    rows = [{"id": f"d{i:03d}", "text": f"doc {i}"} for i in range(32)]
    rows[3]["text"] = rows[19]["text"] = "POISON pill"
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    summary = lmlink.batch.run_embed(
        src, out, endpoint=server.url, model="fake-model", batch_size=32
    )
    assert summary.ok == 30
    assert summary.errors == {"ContextLengthError": 2}


def test_a_shared_refusal_is_remembered_for_later_groups(
    server: FakeServer, tmp_path: Path
) -> None:
    """Once both halves of a group were refused alike, later groups refused alike are not
    split again: one request each."""
    body = {"object": "error", "message": "unsupported encoding", "code": 400}
    server.enqueue_embeddings(*[Reply(status=400, body=body) for _ in range(200)])
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"d{i:03d}", "text": f"doc {i}"} for i in range(320)]
    )
    summary = lmlink.batch.run_embed(
        src, tmp_path / "out.jsonl", endpoint=server.url, model="fake-model", batch_size=32
    )
    assert summary.errors == {"BadRequestError": 320}
    # 10 groups: at least one splits once (3 requests), the others at most that.
    assert len(_embed_requests(server)) < 3 * 10


def test_a_group_whose_answer_is_too_large_is_split(server: FakeServer, tmp_path: Path) -> None:
    """--batch-size 1024 with a 4096-dimension model is an 80 MB JSON answer, over the
    64 MiB cap: the group is the cause, so smaller groups must get the vectors. Here the
    same at a smaller scale: 64 vectors of 64 floats against a 20 kB cap."""
    server.embed = EmbedSettings(dimensions=64)
    src = write_jsonl(
        tmp_path / "in.jsonl", [{"id": f"d{i:03d}", "text": f"doc {i}"} for i in range(64)]
    )

    async def run() -> lmlink.BatchSummary:
        async with lmlink.AsyncClient(
            endpoint=server.url, model="fake-model", max_response_bytes=20_000
        ) as client:
            return await lmlink.batch.arun_embed(
                src, tmp_path / "out.jsonl", client=client, batch_size=64
            )

    summary = asyncio.run(run())
    assert summary.errors == {}
    assert summary.ok == 64
