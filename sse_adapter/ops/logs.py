"""Logging: plain text for people, JSON lines for log pipelines.

The access line (``sse_adapter.access``) carries its fields as ``extra``;
the JSON format puts them at the top level of each line. In the text format
every message has its control characters escaped, so that no value a client
or an upstream sent (a model name, an error message) can start a forged line.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

__all__ = ["PROBE_ROUTES", "JSONFormatter", "ProbeFilter", "TextFormatter", "logfmt", "logging_config"]

# The access line's routes that are an orchestrator's or a scraper's, not a client's
PROBE_ROUTES = frozenset({"healthz", "readyz", "metrics"})

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_BARE = re.compile(r"[^\s\"=\\\x00-\x1f\x7f]+")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char, f"\\x{ord(char):02x}")


def logfmt(value: object) -> str:
    """A value for a ``name=value`` text line: as it is when it is one plain
    word, else quoted and escaped, so it cannot break out of its field."""
    text = str(value)
    return text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = _CONTROL.sub(_escaped, record.message)
        return super().formatMessage(record)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class ProbeFilter(logging.Filter):
    """Keeps health probes and metric scrapes out of the access log (``--access-log-probes
    off``): Kubernetes probes every few seconds, and /metrics counts the hits all the same."""

    def filter(self, record: logging.LogRecord) -> bool:
        return getattr(record, "fields", {}).get("route") not in PROBE_ROUTES


def logging_config(log_format: str, level: str, probes: bool = False) -> dict[str, Any]:
    """A dictConfig for uvicorn's ``log_config``: every logger, ours and uvicorn's, one format;
    ``probes``: the access lines of /healthz, /readyz and /metrics too."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JSONFormatter"}
        if log_format == "json"
        else {"()": f"{__name__}.TextFormatter", "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"probes": {"()": f"{__name__}.ProbeFilter"}},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "sse_adapter.access": {"filters": [] if probes else ["probes"]},
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},  # ours replaces it
            # the probe and the demo use httpx as a client: no line per request of theirs
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
        },
    }
