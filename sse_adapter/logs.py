"""Logging: plain text for people, JSON lines for log pipelines.

The access line (``sse_adapter.access``) carries its fields as ``extra``;
the JSON format puts them at the top level of each line.
"""

from __future__ import annotations

import json
import logging
from typing import Any

__all__ = ["JSONFormatter", "logging_config"]


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


def logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A dictConfig for uvicorn's ``log_config``: every logger, ours and uvicorn's, one format."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JSONFormatter"}
        if log_format == "json"
        else {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.error": {"level": level.upper(), "handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": False},  # ours replaces it
        },
    }
