"""The benchmark: the direct connection and the adapter, measured in one run.

    .venv/bin/python bench/run.py [--quick] [--only SECTION ...]

It starts the fast fake upstream (bench/upstream.py) and the adapter as users
run it (the CLI; uvicorn takes uvloop and httptools), drives both with
bench/client.py processes, and prints every figure beside the direct
connection's. The JSON goes to bench/results/. Sections:

  throughput    events/s with 1, 10 and 100 streams in bursts
  lockstep      one event per read, every stream's event written at the same
                instant (a GPU server's continuous batching): CPU per event at
                200 x 20/s (each format, the floor beside it), added latency at
                100 x 20/s and 1,000 x 5/s, and the time 1,000 streams take to open
  setup         time to the first event of one stream, one stream after another
  memory        RSS across 10,000 sequential streams, ending in [DONE] and in errors
  idle          5,000 silent streams: RSS each, and how late heartbeats are
  workers       --workers 2 against one worker
  instructions  CPU instructions per relayed event under valgrind's callgrind, for
                the adapter and for the floor (bench/floor.py), in the same run, for
                each format (--formats)

Formats: chat (/v1/chat/completions, the default of every section), responses
(/v1/responses) and messages (/v1/messages); the fake upstream streams each in
its own shape, and the floor relays each in its own framing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
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

sys.path.insert(0, str(Path(__file__).parent))
from instructions import instructions_per_event
from procs import free_port, process, wait_for_port

HERE = Path(__file__).parent
PY = sys.executable
HEARTBEAT = 5.0
SECTIONS = ("throughput", "lockstep", "setup", "memory", "idle", "workers", "instructions")
FORMATS = ("chat", "responses", "messages")


def adapter_command(upstream: int, port: int, workers: int = 1) -> list[str]:
    return [
        PY,
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
        "--log-level",
        "warning",
    ]


@contextmanager
def adapter(upstream: int, workers: int = 1) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    with process(*adapter_command(upstream, port, workers)) as proc:
        wait_for_port(port, proc)
        yield f"http://127.0.0.1:{port}", proc


@contextmanager
def floor(upstream: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """bench/floor.py: the least work a relay of these streams can do on this stack."""
    port = free_port()
    with process(PY, str(HERE / "floor.py"), str(port), f"http://127.0.0.1:{upstream}") as proc:
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
        "opened_in": max(r.get("opened_in", 0.0) for r in results),
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
        figures["cpu_us_per_event"] = (cpu_seconds(pids) - cpu) / result["events"] * 1e6
    return figures


def lockstep(
    url: str,
    streams: int,
    rate: float,
    seconds: float,
    clients: int,
    pids: list[int] | None = None,
    form: str = "chat",
) -> dict[str, Any]:
    """Every stream's event at the same instant: the delays, the time to open, and the CPU."""
    cpu = cpu_seconds(pids) if pids else 0.0
    plan = {"mode": "lockstep", "rate": rate, "seconds": seconds, "format": form}
    result = drive(url, streams, plan, clients)
    figures: dict[str, Any] = {
        "delay_ms": {k: v * 1000 for k, v in percentiles(result["delays"]).items()},
        "opened_in_s": result["opened_in"],
        "events": result["events"],
        "failed_streams": result["errors"],
    }
    if pids:
        figures["cpu_us_per_event"] = (cpu_seconds(pids) - cpu) / result["events"] * 1e6
    return figures


def first_events(url: str, count: int, end: str = "done", events: int = 1) -> list[float]:
    """``count`` streams one after another on one kept-alive connection, as a
    gateway sends them; the seconds from each request to its first event."""
    host, port = url.removeprefix("http://").split(":")
    plan = {"mode": "burst", "events": events, "end": end}
    body = json.dumps({"model": "bench", "stream": True, "bench": plan}).encode()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    times = []
    with socket.create_connection((host, int(port))) as sock:
        for _ in range(count):
            started = time.perf_counter()
            sock.sendall(request)
            seen, first = b"", float("nan")
            while not seen.endswith(b"\r\n0\r\n\r\n"):
                data = sock.recv(65536)
                if not data:
                    raise RuntimeError(f"{url} closed the connection")
                if first != first and b"data: " in seen + data:
                    first = time.perf_counter() - started
                seen += data
            times.append(first)
    return times


def setup(direct: str, url: str, count: int) -> dict[str, float]:
    first_events(url, 20)  # warm both
    first_events(direct, 20)
    d = statistics.median(first_events(direct, count))
    a = statistics.median(first_events(url, count))
    return {"direct_ms": d * 1000, "adapter_ms": a * 1000, "added_ms": (a - d) * 1000}


def memory(url: str, pids: list[int], requests: int) -> dict[str, float]:
    """RSS after the first tenth of the streams and after all of them: flat, or a leak."""
    marks = {}
    for done in range(1, requests + 1):
        first_events(url, 1, end="error" if done % 2 else "done", events=5)
        if done in (requests // 10, requests):
            marks[done] = rss_bytes(pids)
    early, late = marks[requests // 10], marks[requests]
    return {
        "requests": requests,
        "rss_early_mb": early / 2**20,
        "rss_late_mb": late / 2**20,
        "growth_mb": (late - early) / 2**20,
    }


def idle(url: str, streams: int, seconds: float, pids: list[int]) -> dict[str, float]:
    """Open the streams over a ramp, then measure the steady state: RSS, and
    how late each heartbeat is once every stream is open."""
    ramp = streams / 500
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


def instructions(up_port: int, forms: list[str]) -> dict[str, Any]:
    """Per format: the floor's instructions per event and the adapter's, one fresh server each."""
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        return {"skipped": "valgrind with callgrind_control is not installed"}
    upstream = f"http://127.0.0.1:{up_port}"
    report: dict[str, Any] = {}
    for form in forms:
        runs: dict[str, Any] = {}
        port = free_port()
        command = [PY, str(HERE / "floor.py"), str(port), upstream]
        runs["floor"] = instructions_per_event(command, port, form=form)
        port = free_port()
        runs["adapter"] = instructions_per_event(adapter_command(up_port, port), port, form=form)
        if form == "chat" and importlib.util.find_spec("sse_starlette") is not None:
            port = free_port()
            command = [PY, str(HERE / "floor.py"), str(port), upstream, "--sse-starlette"]
            runs["floor_sse_starlette"] = instructions_per_event(command, port)
        runs["ratio"] = runs["adapter"]["per_event"] / runs["floor"]["per_event"]
        report[form] = runs
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs: a smoke test of the harness")
    parser.add_argument("--clients", type=int, default=2, help="client processes driving the load")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=SECTIONS, help="sections to run")
    parser.add_argument(
        "--formats",
        nargs="+",
        choices=FORMATS,
        default=FORMATS,
        help="the formats whose instructions and lockstep CPU per event are measured (chat's lockstep "
        "figures always are)",
    )
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    console = Console(width=150)
    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "quick": args.quick,
    }
    up_port = free_port()
    with process(PY, str(HERE / "upstream.py"), str(up_port)) as up:
        wait_for_port(up_port, up)
        direct = f"http://127.0.0.1:{up_port}"
        with adapter(up_port) as (url, proc), floor(up_port) as (floor_url, floor_proc):
            servers = {
                "direct": (direct, []),
                "floor": (floor_url, [floor_proc.pid]),
                "adapter": (url, family(proc)),
            }
            run_one_worker(report, args, scale, console, servers)
        if "workers" in args.only:
            with console.status("workers"):
                with adapter(up_port) as (url, _):
                    one = throughput(url, 100, int(200_000 * scale), args.clients)
                with adapter(up_port, workers=2) as (url, _):
                    two = throughput(url, 100, int(200_000 * scale), args.clients)
            ratio = two["events_per_s"] / one["events_per_s"]
            report["workers"] = {"one": one["events_per_s"], "two": two["events_per_s"], "ratio": ratio}
        if "instructions" in args.only:
            with console.status("instructions per event, under callgrind (a few minutes)"):
                report["instructions"] = instructions(up_port, list(args.formats))
    show(report, console)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    name = "quick.json" if args.quick else f"{report['when'][:10]}.json"
    for path in (results / name, results / ("latest-quick.json" if args.quick else "latest.json")):
        path.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"written to {results / name}")


def run_one_worker(
    report: dict[str, Any],
    args: argparse.Namespace,
    scale: float,
    console: Console,
    servers: dict[str, tuple[str, list[int]]],
) -> None:
    """The sections that need one adapter worker, with the direct connection and the floor beside it."""
    direct, (url, pids) = servers["direct"][0], servers["adapter"]
    if "throughput" in args.only:
        report["throughput"] = {}
        for streams in (1, 10, 100):
            with console.status(f"throughput, {streams} streams"):
                total = int(200_000 * scale)
                report["throughput"][streams] = {
                    "direct": throughput(direct, streams, total, args.clients),
                    "adapter": throughput(url, streams, total, args.clients, pids),
                }
    if "lockstep" in args.only:
        report["lockstep"] = {}
        seconds = max(3.0, 10 * scale)
        others = [form for form in args.formats if form != "chat"]
        for load, (streams, rate) in enumerate(((200, 20.0), (100, 20.0), (1000, 5.0))):
            streams = max(10, int(streams * scale))
            # chat at every load; the other formats at the first, for their CPU per event
            for form in ["chat", *others] if load == 0 else ["chat"]:
                with console.status(f"lockstep, {form}, {streams} streams x {rate:g} events/s"):
                    runs = {
                        name: lockstep(where, streams, rate, seconds, args.clients, watch or None, form)
                        for name, (where, watch) in servers.items()
                    }
                for name in ("floor", "adapter"):
                    runs[name]["added_ms"] = {
                        key: runs[name]["delay_ms"][key] - runs["direct"]["delay_ms"][key]
                        for key in ("p50", "p99", "max")
                    }
                key = f"{streams}x{rate:g}" if form == "chat" else f"{form} {streams}x{rate:g}"
                report["lockstep"][key] = runs
    if "setup" in args.only:
        with console.status("setup: time to the first event"):
            report["setup"] = setup(direct, url, max(50, int(500 * scale)))
    if "memory" in args.only:
        with console.status("memory: sequential streams"):
            report["memory"] = memory(url, pids, max(1000, int(10_000 * scale)))
    if "idle" in args.only:
        with console.status("idle capacity"):
            streams = int(5000 * scale)
            report["idle"] = {"streams": streams, **idle(url, streams, 3 * HEARTBEAT, pids)}


def show(report: dict[str, Any], console: Console) -> None:
    table = Table(title=f"sse-adapter benchmark, {report['machine']}", title_justify="left")
    for column in ("measure", "direct", "through the adapter", "ratio or difference"):
        table.add_column(column)
    for streams, run in report.get("throughput", {}).items():
        d, a = run["direct"]["events_per_s"], run["adapter"]["events_per_s"]
        table.add_row(f"throughput, {streams} streams (events/s)", f"{d:,.0f}", f"{a:,.0f}", f"{a / d:.2f}x")
        if streams == 100:
            cpu = run["adapter"]["cpu_us_per_event"]
            table.add_row("  adapter CPU per event, in bursts", "", f"{cpu:.1f} us", "")
    for name, run in report.get("lockstep", {}).items():
        d, f, a = run["direct"], run["floor"], run["adapter"]
        cpu_f, cpu_a = f["cpu_us_per_event"], a["cpu_us_per_event"]
        table.add_row(
            f"lockstep {name}/s: CPU per event (floor | adapter)",
            "",
            f"{cpu_f:.1f} | {cpu_a:.1f} us",
            f"{cpu_a / cpu_f:.2f}x the floor",
        )
        for key in ("p50", "p99", "max"):
            table.add_row(
                f"lockstep {name}/s: delay {key} (ms; floor | adapter)",
                f"{d['delay_ms'][key]:.1f}",
                f"{f['delay_ms'][key]:.1f} | {a['delay_ms'][key]:.1f}",
                f"+{f['added_ms'][key]:.1f} | +{a['added_ms'][key]:.1f} ms",
            )
        table.add_row(
            f"lockstep {name}/s: all streams open (s; floor | adapter)",
            f"{d['opened_in_s']:.2f}",
            f"{f['opened_in_s']:.2f} | {a['opened_in_s']:.2f}",
            "",
        )
    if setup_run := report.get("setup"):
        table.add_row(
            "setup: first event of one stream (ms, median)",
            f"{setup_run['direct_ms']:.2f}",
            f"{setup_run['adapter_ms']:.2f}",
            f"+{setup_run['added_ms']:.2f} ms",
        )
    if mem := report.get("memory"):
        table.add_row(
            f"memory: RSS after {mem['requests'] // 10:,} / {mem['requests']:,} sequential streams",
            "",
            f"{mem['rss_early_mb']:.1f} / {mem['rss_late_mb']:.1f} MB",
            f"{mem['growth_mb']:+.2f} MB",
        )
    if idle_run := report.get("idle"):
        table.add_row(
            f"idle: RSS per stream, {idle_run['streams']} streams",
            "",
            f"{idle_run['rss_per_stream_kb']:.1f} KB",
            "",
        )
        for key in ("p50", "p99", "max"):
            table.add_row(f"idle: heartbeat lateness {key}", "", f"{idle_run[f'late_{key}_ms']:.1f} ms", "")
    if workers := report.get("workers"):
        table.add_row(
            "throughput, 100 streams, 2 workers",
            f"{workers['one']:,.0f} (1 worker)",
            f"{workers['two']:,.0f}",
            f"{workers['ratio']:.2f}x of 1",
        )
    runs = report.get("instructions", {})
    if "skipped" in runs:
        table.add_row("instructions per event", "", runs["skipped"], "")
        runs = {}
    for form, run in runs.items():
        floor = run["floor"]["per_event"]
        table.add_row(f"instructions per event, {form}: the floor", "", f"{floor:,.0f}", "1.00x")
        if "floor_sse_starlette" in run:
            sse = run["floor_sse_starlette"]["per_event"]
            table.add_row("  the floor through sse-starlette", "", f"{sse:,.0f}", f"{sse / floor:.2f}x")
        table.add_row("  the adapter", "", f"{run['adapter']['per_event']:,.0f}", f"{run['ratio']:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
