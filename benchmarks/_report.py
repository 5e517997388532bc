"""From the raw rounds of ``run.py`` to medians, in-round ratios, targets, tables and a chart.

Ratios are computed inside each round (a client against raw aiohttp and against the openai
SDK *measured in the same round*) and the median of those per-round ratios is reported, so
that a slow spell on the machine moves both sides of a ratio together. A ratio above 1
always means "better than the reference": for rates it is client / reference, for CPU
costs reference / client.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _clients import CLIENTS

Result = dict[str, Any]  # one worker's output
Round = dict[str, Result | None]  # client name -> its output in that round (None: it failed)

AIOHTTP = "aiohttp"


def openai_ref(name: str) -> str:
    """The openai SDK client a client is compared with: same kind (async or sync)."""
    return "openai-sync" if CLIENTS[name].kind == "sync" else "openai"


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    get: Callable[[Result], float | None]


def _rps(level: int, field: str = "per_s") -> Callable[[Result], float | None]:
    def get(r: Result) -> float | None:
        row = r.get("rps", {}).get(str(level))
        return None if row is None else float(row[field])

    return get


def _stream(which: str, field: str = "per_s") -> Callable[[Result], float | None]:
    def get(r: Result) -> float | None:
        row = r.get(which)
        return None if row is None else float(row[field])

    return get


LEVELS = (1, 16, 64, 256)
METRICS: list[Metric] = [
    *(Metric(f"rps_{n}", f"req/s, {n} in flight", "req/s", True, _rps(n)) for n in LEVELS),
    *(
        Metric(f"cpu_req_{n}", f"CPU µs/request, {n} in flight", "µs", False, _rps(n, "cpu_us"))
        for n in LEVELS
    ),
    Metric("stream_one", "chunks/s, one stream", "chunks/s", True, _stream("stream_one")),
    Metric("stream_many", "chunks/s, many streams", "chunks/s", True, _stream("stream_many")),
    Metric(
        "cpu_chunk_one",
        "CPU µs/chunk, one stream",
        "µs",
        False,
        _stream("stream_one", "cpu_us"),
    ),
    Metric(
        "cpu_chunk_many",
        "CPU µs/chunk, many streams",
        "µs",
        False,
        _stream("stream_many", "cpu_us"),
    ),
]
BUSY = {
    **{f"rps_{n}": _rps(n, "server_busy") for n in LEVELS},
    "stream_one": _stream("stream_one", "server_busy"),
    "stream_many": _stream("stream_many", "server_busy"),
}


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(value: float, ref: float, higher_is_better: bool) -> float:
    return value / ref if higher_is_better else ref / value


def summarize(
    rounds: list[Round],
    memory: list[dict[str, float]],
    imports: dict[str, list[float]],
) -> dict[str, dict[str, Any]]:
    """Per client: each metric's median, spread, server load, and median in-round ratios."""
    out: dict[str, dict[str, Any]] = {}
    names = [n for n in CLIENTS if any(r.get(n) for r in rounds) or n in imports]
    for name in names:
        row: dict[str, Any] = {}
        for metric in METRICS:
            values: list[float] = []
            vs_aiohttp: list[float] = []
            vs_openai: list[float] = []
            busy: list[float] = []
            for rnd in rounds:
                mine = _value(rnd.get(name), metric.get)
                if mine is None:
                    continue
                values.append(mine)
                server = _value(rnd.get(name), BUSY.get(metric.key))
                if server is not None:
                    busy.append(server)
                for ref, bucket in ((AIOHTTP, vs_aiohttp), (openai_ref(name), vs_openai)):
                    theirs = _value(rnd.get(ref), metric.get)
                    if theirs:
                        bucket.append(_ratio(mine, theirs, metric.higher_is_better))
            if values:
                row[metric.key] = {
                    "median": _median(values),
                    "min": min(values),
                    "max": max(values),
                    "n": len(values),
                    "vs_aiohttp": _median(vs_aiohttp),
                    "vs_openai": _median(vs_openai),
                    "server_busy": _median(busy),
                }
        peaks = [m[name] for m in memory if m.get(name) is not None]
        if peaks:
            row["peak_rss_mb"] = {"median": _median(peaks), "min": min(peaks), "max": max(peaks)}
        if imports.get(name):
            row["import_ms"] = {
                "median": _median(imports[name]),
                "min": min(imports[name]),
                "n": len(imports[name]),
            }
        out[name] = row
    return out


def _value(result: Result | None, get: Callable[[Result], float | None] | None) -> float | None:
    if result is None or get is None:
        return None
    try:
        return get(result)
    except (KeyError, TypeError, ValueError):
        return None


# -- targets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    limit: float
    at_least: bool  # True: value >= limit passes; False: value <= limit passes
    unit: str
    also: bool = True  # a second condition that must hold too (open fds for the leak test)

    @property
    def passed(self) -> bool | None:
        if self.value is None:
            return None
        ok = self.value >= self.limit if self.at_least else self.value <= self.limit
        return ok and self.also

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "at_least": self.at_least,
            "unit": self.unit,
            "pass": self.passed,
        }


def _get(summary: dict[str, dict[str, Any]], name: str, key: str, field: str) -> float | None:
    value = summary.get(name, {}).get(key, {}).get(field)
    return None if value is None else float(value)


def targets(
    summary: dict[str, dict[str, Any]],
    extra: dict[str, Any],
) -> list[Target]:
    """The issue's targets, judged on this run (ratios: medians of in-round ratios)."""
    s = summary
    mem_lm = _get(s, "lmlink", "peak_rss_mb", "median")
    mem_ah = _get(s, AIOHTTP, "peak_rss_mb", "median")
    leak = extra.get("leak") or {}
    return [
        Target(
            "lmlink async req/s at 64 in flight vs raw aiohttp",
            _get(s, "lmlink", "rps_64", "vs_aiohttp"),
            1.2,
            True,
            "x",
        ),
        Target(
            "lmlink async req/s at 64 in flight vs openai",
            _get(s, "lmlink", "rps_64", "vs_openai"),
            10.0,
            True,
            "x",
        ),
        Target(
            "lmlink one-stream chunks/s vs raw aiohttp (json.loads)",
            _get(s, "lmlink", "stream_one", "vs_aiohttp"),
            2.5,
            True,
            "x",
        ),
        Target(
            "lmlink one-stream chunks/s vs openai",
            _get(s, "lmlink", "stream_one", "vs_openai"),
            25.0,
            True,
            "x",
        ),
        Target(
            "lmlink sync req/s at 1 in flight vs openai sync",
            _get(s, "lmlink-sync", "rps_1", "vs_openai"),
            3.0,
            True,
            "x",
        ),
        Target(
            "lmlink sync req/s at 16 in flight vs openai sync",
            _get(s, "lmlink-sync", "rps_16", "vs_openai"),
            3.0,
            True,
            "x",
        ),
        Target(
            "import lmlink, -X importtime cumulative",
            extra.get("import_lmlink_importtime_ms"),
            60.0,
            False,
            "ms",
        ),
        Target(
            "import lmlink, wall minus `python -c pass`",
            extra.get("import_lmlink_wall_ms"),
            60.0,
            False,
            "ms",
        ),
        Target("`lmlink --help`, wall", extra.get("cli_help_ms"), 250.0, False, "ms"),
        Target(
            "peak RSS at 256 in flight, lmlink minus raw aiohttp",
            None if mem_lm is None or mem_ah is None else mem_lm - mem_ah,
            10.0,
            False,
            "MB",
        ),
        Target(
            f"one AsyncClient, {leak.get('requests', 0):,.0f} requests: RSS growth after "
            f"warm-up (open fds {leak.get('fd_counts', '-')}, must not change)",
            leak.get("rss_growth_mb"),
            float(leak.get("max_growth_mb", 2.0)),
            False,
            "MB",
            also=len(leak.get("fd_counts", [])) == 1,
        ),
    ]


# -- markdown ----------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if digits == 0 and abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if digits else f"{value:.1f}"


def _x(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}x" if value >= 10 else f"{value:.2f}x"


def _cell(row: dict[str, Any], key: str, *, ratios: bool = True) -> str:
    m = row.get(key)
    if not m:
        return "-"
    text = _num(m["median"], 1 if m["median"] < 100 else 0)
    if ratios:
        text += f" ({_x(m['vs_aiohttp'])}, {_x(m['vs_openai'])})"
    return text


def _busiest(summary: dict[str, dict[str, Any]]) -> tuple[float, str]:
    """The highest median server load of any measurement, and where it was."""
    best, where = 0.0, "-"
    for name, row in summary.items():
        for key, m in row.items():
            busy = m.get("server_busy") if isinstance(m, dict) else None
            if busy is not None and busy > best:
                best, where = busy, f"{CLIENTS[name].label}, {key}"
    return best, where


def server_lines(server: dict[str, Any], summary: dict[str, dict[str, Any]]) -> list[str]:
    """What the fake server can do (wrk) and how busy the clients kept it."""
    lines = []
    if server.get("chat_64"):
        chat64 = server["chat_64"]["requests_per_s"]
        chat256 = server["chat_256"]["requests_per_s"]
        chunks = server["stream500_64"].get("chunks_per_s")
        lines.append(
            f"Server ceiling ({server.get('wrk', 'wrk')}, 1 thread, on the client CPU): "
            f"{_num(chat64)} non-streamed req/s at 64 connections, {_num(chat256)} at 256; "
            f"{_num(chunks)} chunks/s streaming (64 connections, 500-chunk streams)."
        )
    busy, where = _busiest(summary)
    lines.append(
        f"Server CPU load during the client measurements: at most {busy:.0%} of its core "
        f"(median over rounds; {where}), so the server was never the bottleneck."
        if busy < 0.9
        else f"WARNING: the server was {busy:.0%} busy ({where}): it may have been the limit."
    )
    return lines


def markdown(
    summary: dict[str, dict[str, Any]],
    targets_: list[Target],
    meta: dict[str, Any],
    server: dict[str, Any],
) -> str:
    plan = meta["plan"]
    one = f"{plan['stream_one']:,}"
    many = f"{plan['stream_many'][0]}x{plan['stream_many'][1]:,}"
    lines = [
        f"{meta['mode'].capitalize()} run, {meta['rounds']} rounds, {meta['started']}, "
        f"{meta.get('duration_s', 0):.0f} s; {meta['machine']['cpu']}, "
        f"{meta['machine']['cores']} cores; Python {meta['python']}. 1-minute load average "
        f"before the run: {meta.get('loadavg_start', 0):.1f} (0 is an idle machine; more means "
        "other processes shared it), at the end: "
        f"{meta.get('loadavg_end', 0):.1f} (the benchmark's own processes included).",
        "",
        "Medians of the rounds; in brackets the median in-round ratio vs raw aiohttp and vs the",
        "openai SDK of the same kind (AsyncOpenAI for async clients, OpenAI for sync ones);",
        "above 1x is better. Sync clients: N in flight = N threads.",
        "",
        "**Non-streamed chat, requests/s**",
        "",
        "| client | 1 in flight | 16 in flight | 64 in flight | 256 in flight |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        label = CLIENTS[name].label
        cells = [_cell(row, f"rps_{n}") for n in LEVELS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Client CPU per non-streamed request, µs** (process CPU time / requests)",
        "",
        "| client | 1 in flight | 16 in flight | 64 in flight | 256 in flight |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        cells = [_cell(row, f"cpu_req_{n}") for n in LEVELS]
        lines.append(f"| {CLIENTS[name].label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Streaming: content chunks/s, and client CPU µs per chunk**",
        "",
        f"| client | one {one}-chunk stream | {many}-chunk streams at once "
        "| CPU µs/chunk, one | CPU µs/chunk, many |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        cells = [_cell(row, k) for k in ("stream_one", "stream_many")]
        cells += [_cell(row, k) for k in ("cpu_chunk_one", "cpu_chunk_many")]
        lines.append(f"| {CLIENTS[name].label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "**Footprint**: import time (fresh process, wall minus `python -c pass`, median) and "
        "peak RSS (fresh process, `ru_maxrss`, 256 requests in flight; sync clients: 16 threads)",
        "",
        "| client | imports | import ms (min) | peak RSS MB |",
        "|---|---|---:|---:|",
    ]
    for name, row in summary.items():
        spec = CLIENTS[name]
        imp = row.get("import_ms", {})
        mem = row.get("peak_rss_mb", {}).get("median")
        text = f"{_num(imp.get('median'), 1)} ({_num(imp.get('min'), 1)})"
        lines.append(f"| {spec.label} | `{spec.imports}` | {text} | {_num(mem, 1)} |")
    lines += ["", *server_lines(server, summary)]
    lines += [
        "",
        "**Targets**",
        "",
        "| target | this run | limit | result |",
        "|---|---:|---:|---|",
    ]
    for t in targets_:
        verdict = {True: "PASS", False: "**FAIL**", None: "not measured"}[t.passed]
        sign = "≥" if t.at_least else "≤"
        value = "-" if t.value is None else f"{t.value:.2f} {t.unit}"
        lines.append(f"| {t.name} | {value} | {sign} {t.limit:g} {t.unit} | {verdict} |")
    return "\n".join(lines) + "\n"


# -- chart -------------------------------------------------------------------------------------

_COLOURS = {
    "lmlink": "#d62728",
    "lmlink-sync": "#ff9896",
    "aiohttp": "#1f77b4",
    "httpx": "#2ca02c",
    "httpx-sync": "#98df8a",
    "openai": "#7f7f7f",
    "openai-aiohttp": "#bcbd22",
    "openai-sync": "#c7c7c7",
}


def chart(summary: dict[str, dict[str, Any]], meta: dict[str, Any], path: Path) -> None:
    """Six panels, log scales where clients differ by orders of magnitude; PNG < 200 KB."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    labels = [CLIENTS[n].label for n in names]
    colours = [_COLOURS.get(n, "#333333") for n in names]
    plan = meta["plan"]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.2), dpi=80)

    ax = axes[0][0]
    for name, colour in zip(names, colours, strict=True):
        points = [
            (n, summary[name][f"rps_{n}"]["median"]) for n in LEVELS if f"rps_{n}" in summary[name]
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            style = "--" if CLIENTS[name].kind == "sync" else "-"
            ax.plot(xs, ys, style, marker="o", color=colour, label=CLIENTS[name].label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(LEVELS), [str(n) for n in LEVELS])
    ax.set_xlabel("requests in flight (sync: threads)")
    ax.set_title("non-streamed requests/s (higher is better)")
    top = max(
        (r[f"rps_{n}"]["median"] for r in summary.values() for n in LEVELS if f"rps_{n}" in r),
        default=1.0,
    )
    ax.set_ylim(top=top * 12)  # headroom for the legend
    ax.legend(fontsize=6.5, loc="upper center", ncol=2, framealpha=0.9)
    ax.grid(True, which="both", alpha=0.3)

    def values(key: str, fallback: str = "") -> list[float]:
        rows = [summary[n].get(key) or summary[n].get(fallback) or {} for n in names]
        return [row.get("median") or 0.0 for row in rows]

    def bars(ax: Any, data: list[float], title: str, log: bool = True) -> None:
        ax.barh(range(len(names)), data, color=colours)
        ax.set_yticks(range(len(names)), labels, fontsize=8)
        ax.invert_yaxis()
        if log and any(data):
            ax.set_xscale("log")
            ax.set_xlim(right=max(data) * 4)  # room for the labels
        elif any(data):
            ax.set_xlim(right=max(data) * 1.2)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", which="both", alpha=0.3)
        for i, v in enumerate(data):
            if v:
                ax.text(v, i, f" {_num(v, 1)}", va="center", fontsize=7)

    streams, n = plan["stream_many"]
    bars(axes[0][1], values("stream_one"), f"chunks/s, one {plan['stream_one']:,}-chunk stream")
    bars(axes[0][2], values("stream_many"), f"chunks/s, {streams} streams x {n:,} chunks")
    bars(
        axes[1][0],
        values("cpu_req_64", "cpu_req_16"),
        "client CPU µs/request, 64 in flight (sync: 16; lower is better)",
    )
    bars(axes[1][1], values("import_ms"), "import time, ms (lower is better)", log=False)
    bars(axes[1][2], values("peak_rss_mb"), "peak RSS MB, 256 in flight (sync: 16)", log=False)
    fig.suptitle(
        f"lmlink benchmarks: {meta['machine']['cpu']} ({meta['machine']['cores']} cores), "
        f"Python {meta['python']}, {meta['mode']} run, medians of {meta['rounds']} rounds",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
