"""Instructions per relayed event, counted by valgrind's callgrind: stable where wall time is not.

The server runs under ``valgrind --tool=callgrind --instr-atstart=no``. Streams
in lockstep (every stream's event written at the same instant, one HTTP chunk
each, on a grid of the interval) run until the client has caught up; then
counting is switched on for a whole number of ticks, dumped, and divided by the
events sent inside that window that the client received before the dump, so a
server that stalls cannot look cheap.

Both commands are given halfway between two ticks, when the relay is idle:
valgrind takes a command when the server next runs, so each tick's work falls
wholly inside the window or wholly outside it, and the events counted are those
of the ticks counted (a window of arrival times would count one tick more or
less than it measured, 2.5% at 40 ticks).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import process, wait_for_port

HERE = Path(__file__).parent
_TOTAL = re.compile(rb"^(?:summary|totals): (\d+)", re.M)


def _control(*args: str) -> None:
    subprocess.run(["callgrind_control", *args], check=True, capture_output=True, timeout=120)


def _halfway(interval: float) -> float:
    """The next instant halfway between two ticks of the upstream's grid."""
    return (math.floor(time.monotonic() / interval - 0.5) + 1.5) * interval


def _sleep_until(instant: float) -> None:
    time.sleep(max(0.0, instant - time.monotonic()))


def instructions_per_event(
    command: list[str],
    port: int,
    *,
    streams: int = 20,
    rate: float = 2.0,
    warmup: float = 20.0,
    window: float = 20.0,
    form: str = "chat",
) -> dict[str, float]:
    """Run ``command`` (a server listening on ``port``) under callgrind and measure it,
    on streams of the format ``form`` (chat, responses or messages)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        valgrind = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}/cg.%p"]
        with process(*valgrind, *command, stop_within=60) as server:
            wait_for_port(port, server, 300)  # python under valgrind starts slowly
            result = out / "client.json"
            plan = {"mode": "lockstep", "rate": rate, "seconds": warmup + window + 10, "format": form}
            client = [sys.executable, str(HERE / "client.py"), f"http://127.0.0.1:{port}", str(streams)]
            load = subprocess.Popen([*client, json.dumps(plan), str(result)])
            time.sleep(warmup)
            pid, interval = str(server.pid), 1 / rate
            began = _halfway(interval)
            ending = began + round(window * rate) * interval  # whole ticks: halfway too
            _sleep_until(began)
            _control("-i", "on", pid)
            _sleep_until(ending)
            _control("-d", pid)  # dump before switching off
            dumped = time.monotonic()
            _control("-i", "off", pid)
            load.wait(warmup + window + 120)
            received = json.loads(result.read_text())
        dumps = [path for path in out.glob(f"cg.{server.pid}.*") if path.suffix != ".json"]
        total = sum(int(m.group(1)) for path in dumps if (m := _TOTAL.search(path.read_bytes())))
    window_events = [
        at < dumped
        for sent, at in zip(received["sent"], received["arrivals"], strict=True)
        if began <= sent < ending
    ]
    events = sum(window_events)
    return {
        "instructions": total,
        "events": events,
        "late_events": len(window_events) - events,  # sent in the window, relayed after it
        "per_event": total / events if events else float("nan"),
        "failed_streams": len(received["errors"]),
    }
