"""JSON log lines for log pipelines (``--log-format json``)."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone


def rfc3339(t: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds (logs, stop-files, Alertmanager)."""
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)
