"""lmlink.ray.map_chat on a local Ray (2 CPUs, loopback only) against the fake server.

One Ray instance serves the whole module: starting one costs seconds, so each test makes
the most of one dataset run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lmlink import ConfigurationError
from lmlink.batch import Task
from lmlink.testing import FakeServer, RecordedRequest, Reply

# Read by Ray when it is imported: keep every Ray process on 127.0.0.1 (the single-machine
# mode Ray uses on laptops) and send no usage report.
_RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "LMLINK_NO_DISCOVERY": "1",
}


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    """A local Ray for this module, with the input order kept across blocks."""
    saved = {k: os.environ.get(k) for k in _RAY_ENV}
    os.environ.update(_RAY_ENV)
    import ray
    import ray.data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with warnings.catch_warnings():
        # Ray's DataContext sets fields it has itself deprecated when it is first made.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ray\.data\.context")
        context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _answer(req: RecordedRequest) -> Reply | str:
    text = req.json["messages"][-1]["content"]
    if text == "refuse me":
        return Reply.error(400, "this prompt is refused")
    if "label" in json.dumps(req.json.get("response_format")):
        return '{"label": "bug"}' if "crash" in text else '{"label": "billing"}'
    return text.upper()


@pytest.fixture
def srv() -> Iterator[FakeServer]:
    with FakeServer(model="fake-model", responder=_answer) as server:
        yield server


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_import_lmlink_does_not_import_ray() -> None:
    """`import lmlink` (and lmlink.batch) loads neither Ray nor pyarrow."""
    code = (
        "import sys, lmlink, lmlink.batch; "
        "bad = [m for m in ('ray', 'pyarrow', 'lmlink.ray') if m in sys.modules]; "
        "sys.exit(f'imported: {bad}' if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_map_chat_adds_the_answer_columns_to_each_row(
    ray_local: Any, srv: FakeServer, tmp_path: Path
) -> None:
    """Parquet in, Parquet out: every row keeps its columns and order and gets its own
    answer; a row the server refuses or that has no prompt gets its error, the others go on."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import lmlink.ray

    rows: list[dict[str, Any]] = [{"n": i, "prompt": f"row {i}"} for i in range(40)]
    rows[7]["prompt"] = "refuse me"
    rows[11]["prompt"] = None
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    ds = ray_local.data.read_parquet(str(tmp_path / "in.parquet"))
    out = lmlink.ray.map_chat(ds, endpoint=srv.url, model="fake-model", max_tokens=9)
    out.write_parquet(str(tmp_path / "out"))
    got = pq.read_table(tmp_path / "out").sort_by("n").to_pylist()
    assert [r["n"] for r in got] == list(range(40))
    for r in got:
        assert set(r) == {"n", "prompt", *lmlink.ray.COLUMNS}
        if r["n"] in (7, 11):
            continue
        assert r["content"] == f"ROW {r['n']}"
        assert r["error"] is None
        assert r["finish_reason"] == "stop"
        assert isinstance(r["prompt_tokens"], int)
        assert isinstance(r["output_tokens"], int)
        assert r["latency_s"] >= 0
        assert r["parsed"] is None
    assert got[7]["content"] is None
    assert got[7]["error"].startswith("BadRequestError: ")
    assert "refused" in got[7]["error"]
    assert got[11]["error"].startswith("BatchInputError: ")
    sent = [r.json for r in srv.requests if r.path.endswith("/chat/completions")]
    assert len(sent) == 39  # the row without a prompt sent nothing
    assert all(body["max_tokens"] == 9 and body["model"] == "fake-model" for body in sent)


def test_map_chat_classify_and_messages_over_two_endpoints_one_dead(
    ray_local: Any, srv: FakeServer
) -> None:
    """A classify task fills `parsed` with JSON text; with a list of endpoints one of which
    refuses connections, every row is still answered by the live one."""
    import lmlink.ray

    texts = ["it crashes", "my invoice", "crash again", "refund please"] * 5
    ds = ray_local.data.from_items([{"text": t} for t in texts])
    out = lmlink.ray.map_chat(
        ds,
        endpoint=[_dead_url(), srv.url],
        model="fake-model",
        prompt_column="text",
        task=Task.classify(["bug", "billing"]),
    )
    got = out.take_all()
    assert [r["text"] for r in got] == texts
    assert [r["error"] for r in got] == [None] * len(texts)
    labels = [json.loads(r["parsed"])["label"] for r in got]
    assert labels == ["bug" if "crash" in t else "billing" for t in texts]
    system = srv.requests[-1].json["messages"][0]
    assert system["role"] == "system"
    assert "bug, billing" in system["content"]

    chats = [{"messages": [{"role": "user", "content": f"m{i}"}]} for i in range(6)]
    got = lmlink.ray.map_chat(
        ray_local.data.from_items(chats),
        endpoint=srv.url,
        model="fake-model",
        messages_column="messages",
    ).take_all()
    assert [r["content"] for r in got] == [f"M{i}" for i in range(6)]


def test_map_chat_checks_its_arguments_before_running(ray_local: Any) -> None:
    """Bad arguments raise ConfigurationError at once, not when the dataset runs."""
    import lmlink.ray

    ds = ray_local.data.from_items([{"prompt": "x"}])
    with pytest.raises(ConfigurationError, match="endpoint"):
        lmlink.ray.map_chat(ds, endpoint=[], model="m")
    with pytest.raises(ConfigurationError, match="concurrency"):
        lmlink.ray.map_chat(ds, endpoint="http://127.0.0.1:1/v1", model="m", concurrency=0)
    with pytest.raises(ConfigurationError, match="prompt_column"):
        lmlink.ray.map_chat(
            ds,
            endpoint="http://127.0.0.1:1/v1",
            model="m",
            messages_column="messages",
            task=Task.summarize(),
        )


def test_a_failure_every_row_shares_fails_the_job(ray_local: Any) -> None:
    """No endpoint reachable: the job fails with the connection error instead of filling
    every row's error column."""
    import lmlink.ray

    ds = ray_local.data.from_items([{"prompt": f"p{i}"} for i in range(4)])
    out = lmlink.ray.map_chat(ds, endpoint=_dead_url(), model="m")
    with pytest.raises(Exception, match="APIConnectionError") as caught:  # wrapped by Ray
        out.take_all()
    assert "refused" in str(caught.value)
