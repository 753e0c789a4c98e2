"""Logging: plain text on a terminal, journald-friendly under systemd, or JSON lines."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from aiohttp.http_exceptions import HttpProcessingError


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc)


class JournalFormatter(logging.Formatter):
    """journald adds the time and the unit; a ``<N>`` prefix carries the priority."""

    _PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                 logging.CRITICAL: 2}

    def format(self, record: logging.LogRecord) -> str:
        prio = self._PRIORITY.get(record.levelno, 6)
        text = f"{record.name}: {super().format(record)}"
        # journald makes each line an entry: a traceback's lines keep the record's priority.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def under_journald() -> bool:
    """True when stderr is the journal stream systemd set up for us. JOURNAL_STREAM is
    inherited by children whose stderr may point elsewhere, so compare it with stderr's own
    device and inode, as systemd.exec(5) advises."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


class BadHttpFilter(logging.Filter):
    """aiohttp logs a malformed request (bad request line, oversized header) with a
    traceback at error level before answering 400 itself. That is bad input, not a fault of
    ours: keep one warning line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
            first = str(exc.message).strip().splitlines()[0] if exc.message else ""
            record.msg, record.args = "malformed HTTP request: %s", (first,)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def setup_logging(level: str, fmt: str) -> None:
    if fmt == "auto":
        fmt = "journal" if under_journald() else "text"
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "journal":
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    server_log = logging.getLogger("aiohttp.server")
    server_log.filters[:] = [BadHttpFilter()]
