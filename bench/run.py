"""The benchmark: the direct connection and the adapter, measured in one run.

    .venv/bin/python bench/run.py [--quick]

It starts the fast fake upstream (bench/upstream.py) and the adapter as users
run it (the CLI; uvicorn takes uvloop and httptools), then drives both with
bench/client.py processes and prints every figure with its ratio to direct.
The JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent
PY = sys.executable
HEARTBEAT = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([*args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def adapter(upstream: int, workers: int = 1) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    args = [
        "-m",
        "sse_adapter",
        "serve",
        "--upstream",
        f"http://127.0.0.1:{upstream}",
        "--port",
        str(port),
        "--heartbeat-interval",
        str(HEARTBEAT),
        "--workers",
        str(workers),
    ]
    with process(PY, *args) as proc:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", proc


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def family(proc: subprocess.Popen[bytes]) -> list[int]:
    """The process and its children (uvicorn's workers)."""
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    kids = [int(pid) for pid in children.read_text().split()] if children.exists() else []
    return [proc.pid, *kids]


def drive(
    url: str, streams: int, plan: dict[str, Any], clients: int, watch: list[int] | None = None
) -> dict[str, Any]:
    """Run the load from several client processes at once; their results, merged, with
    the peak RSS of the ``watch`` processes while it ran."""
    shares = [streams // clients + (1 if n < streams % clients else 0) for n in range(clients)]
    with tempfile.TemporaryDirectory() as folder:
        files = [Path(folder) / f"client{n}.json" for n in range(len(shares))]
        procs = [client(url, share, plan, path) for share, path in zip(shares, files, strict=True) if share]
        peak = 0
        while any(proc.poll() is None for proc in procs):
            peak = max(peak, rss_bytes(watch)) if watch else 0
            time.sleep(0.1)
        if any(proc.returncode for proc in procs):
            raise RuntimeError(f"a bench client failed: exit codes {[proc.returncode for proc in procs]}")
        results = [json.loads(path.read_text()) for path in files if path.exists()]
    return {
        "peak_rss": peak,
        "errors": sum(len(r.get("errors", [])) for r in results),
        "events": sum(r["events"] for r in results),
        "seconds": max(r["seconds"] for r in results),
        "delays": [d for r in results for d in r["delays"]],
        "gaps": [g for r in results for g in r["gaps"]],
        "ready": max(r.get("ready", 0.0) for r in results),
    }


def client(url: str, streams: int, plan: dict[str, Any], result: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, str(HERE / "client.py"), url, str(streams), json.dumps(plan), str(result)])


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {
        "p50": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "max": ordered[-1],
    }


def throughput(
    url: str, streams: int, total: int, clients: int, pids: list[int] | None = None
) -> dict[str, float]:
    cpu = cpu_seconds(pids) if pids else 0.0
    result = drive(url, streams, {"mode": "burst", "events": total // streams}, clients)
    figures = {"events_per_s": result["events"] / result["seconds"], "events": result["events"]}
    if pids:
        figures["cpu_s_per_100k"] = (cpu_seconds(pids) - cpu) / result["events"] * 100_000
    return figures


def latency(url: str, streams: int, rate: float, seconds: float, clients: int) -> dict[str, float]:
    result = drive(url, streams, {"mode": "paced", "rate": rate, "seconds": seconds}, clients)
    return percentiles(result["delays"])


def idle(url: str, streams: int, seconds: float, pids: list[int]) -> dict[str, float]:
    """Open the streams over a ramp, then measure the steady state: RSS, and
    how late each heartbeat is once every stream is open."""
    # Opening a stream costs the adapter ~7 ms of CPU (see README, Performance):
    # open them no faster than it can take them, or the listen backlog overflows.
    ramp = streams / 100
    before = rss_bytes(pids)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "idle.json"
        proc = client(url, streams, {"mode": "idle", "seconds": ramp + seconds, "ramp": ramp}, path)
        time.sleep(ramp + HEARTBEAT)  # every stream open and past its first heartbeat
        steady = before
        while proc.poll() is None:
            steady = max(steady, rss_bytes(pids))
            time.sleep(0.25)
        result = json.loads(path.read_text())
    lateness = [gap - HEARTBEAT for began, gap in result["gaps"] if began >= result["ready"]]
    return {
        "failed_streams": len(result["errors"]),
        "rss_per_stream_kb": (steady - before) / streams / 1024,
        "heartbeats": len(lateness),
        **{f"late_{k}_ms": v * 1000 for k, v in percentiles(lateness).items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs: a smoke test of the harness")
    parser.add_argument("--clients", type=int, default=2, help="client processes driving the load")
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    console = Console()
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "quick": args.quick,
    }
    up_port = free_port()
    with process(PY, str(HERE / "upstream.py"), str(up_port)) as up:
        wait_for_port(up_port, up)
        direct = f"http://127.0.0.1:{up_port}"
        with adapter(up_port) as (url, proc):
            pids = family(proc)
            report["throughput"] = {}
            for streams in (1, 10, 100):
                total = int(200_000 * scale)
                with console.status(f"throughput, {streams} streams"):
                    report["throughput"][streams] = {
                        "direct": throughput(direct, streams, total, args.clients),
                        "adapter": throughput(url, streams, total, args.clients, pids),
                    }
            report["latency"] = {}
            for streams, rate in ((100, 20.0), (1000, 5.0)):
                with console.status(f"latency, {streams} streams x {rate:g} events/s"):
                    seconds = max(2.0, 10 * scale)
                    d = latency(direct, streams, rate, seconds, args.clients)
                    a = latency(url, streams, rate, seconds, args.clients)
                report["latency"][f"{streams}x{rate:g}"] = {
                    "direct_ms": {k: v * 1000 for k, v in d.items()},
                    "adapter_ms": {k: v * 1000 for k, v in a.items()},
                    "added_ms": {k: (a[k] - d[k]) * 1000 for k in d},
                }
            with console.status("load: 1,000 concurrent streams"):
                streams = int(1000 * scale)
                load = drive(url, streams, {"mode": "burst", "events": 100}, args.clients, pids)
                report["load"] = {
                    "streams": streams,
                    "events_per_s": load["events"] / load["seconds"],
                    "peak_rss_mb": load["peak_rss"] / 2**20,
                    "failed_streams": load["errors"],
                }
            with console.status("idle capacity"):
                streams = int(5000 * scale)
                report["idle"] = {"streams": streams, **idle(url, streams, 3 * HEARTBEAT, pids)}
        with adapter(up_port, workers=2) as (url, proc):
            with console.status("two workers"):
                two = throughput(url, 100, int(200_000 * scale), args.clients)
        one = report["throughput"][100]["adapter"]["events_per_s"]
        report["workers"] = {"one": one, "two": two["events_per_s"], "ratio": two["events_per_s"] / one}
    show(report, console)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    name = "quick.json" if args.quick else f"{report['when'][:10]}.json"
    for path in (results / name, results / ("latest-quick.json" if args.quick else "latest.json")):
        path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"written to {results / name}")


def show(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"sse-adapter benchmark, {report['machine']}", title_justify="left")
    for column in ("measure", "direct", "through the adapter", "ratio or difference"):
        table.add_column(column)
    for streams, run in report["throughput"].items():
        d, a = run["direct"]["events_per_s"], run["adapter"]["events_per_s"]
        table.add_row(f"throughput, {streams} streams (events/s)", f"{d:,.0f}", f"{a:,.0f}", f"{a / d:.2f}x")
    cpu = report["throughput"][100]["adapter"]["cpu_s_per_100k"]
    table.add_row("adapter CPU per 100,000 events", "", f"{cpu:.2f} s", "")
    for name, run in report["latency"].items():
        for key in ("p50", "p99", "max"):
            d, a, added = run["direct_ms"][key], run["adapter_ms"][key], run["added_ms"][key]
            table.add_row(f"latency {name} events/s, {key} (ms)", f"{d:.2f}", f"{a:.2f}", f"+{added:.2f} ms")
    load = report["load"]
    table.add_row(
        f"load: {load['streams']} concurrent streams, events/s",
        "",
        f"{load['events_per_s']:,.0f}",
        f"peak RSS {load['peak_rss_mb']:.0f} MB",
    )
    idle_run = report["idle"]
    table.add_row(
        f"idle: RSS per stream, {idle_run['streams']} streams",
        "",
        f"{idle_run['rss_per_stream_kb']:.1f} KB",
        "",
    )
    for key in ("p50", "p99", "max"):
        table.add_row(f"idle: heartbeat lateness {key}", "", f"{idle_run[f'late_{key}_ms']:.1f} ms", "")
    workers = report["workers"]
    table.add_row(
        "throughput, 100 streams, 2 workers", "", f"{workers['two']:,.0f}", f"{workers['ratio']:.2f}x of 1"
    )
    console.print(table)


if __name__ == "__main__":
    main()
