"""Instructions per relayed event, counted by valgrind's callgrind: stable where wall time is not.

The server runs under ``valgrind --tool=callgrind --instr-atstart=no``. Streams
in lockstep (every stream's event written at the same instant, one HTTP chunk
each) run until the client has caught up; then counting is switched on for a
window, dumped, and divided by the events the client received inside that
window, so a server that stalls cannot look cheap.
"""

from __future__ import annotations

import json
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
            pid = str(server.pid)
            _control("-i", "on", pid)
            began = time.monotonic()
            time.sleep(window)
            _control("-d", pid)  # dump before switching off
            ended = time.monotonic()
            _control("-i", "off", pid)
            load.wait(warmup + window + 120)
            received = json.loads(result.read_text())
        dumps = [path for path in out.glob(f"cg.{server.pid}.*") if path.suffix != ".json"]
        total = sum(int(m.group(1)) for path in dumps if (m := _TOTAL.search(path.read_bytes())))
    events = sum(began <= at < ended for at in received["arrivals"])
    return {
        "instructions": total,
        "events": events,
        "per_event": total / events if events else float("nan"),
        "failed_streams": len(received["errors"]),
    }
