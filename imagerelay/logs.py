"""Log lines: plain text, or one JSON object per line (``IMAGERELAY_LOG_FORMAT=json``),
each with the id of the request it belongs to.

The request id lives in a context variable set by the edge middleware; asyncio copies
the context into every task a request starts, so lines from the relay, the pool and the
connectors carry it without passing it around. Lines outside a request carry ``null``.
"""

from __future__ import annotations

import contextvars
import logging
import time
from typing import Literal

import orjson

LogFormat = Literal["text", "json"]

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("imagerelay_request_id", default=None)

# uvicorn's own loggers get the same handler, so every line of the process has one shape.
_LOGGERS = ("imagerelay", "uvicorn", "uvicorn.error", "uvicorn.access")


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info and record.exc_info[0] is not None:
            # The type only: a traceback can carry request data or upstream addresses.
            line["exception"] = record.exc_info[0].__name__
        return orjson.dumps(line).decode()


def configure_logging(level: str, fmt: LogFormat = "text") -> None:
    """One handler on the ``imagerelay`` logger (and, for JSON, on uvicorn's)."""
    handler = logging.StreamHandler()
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        names: tuple[str, ...] = _LOGGERS
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        names = ("imagerelay",)
    for name in names:
        logger = logging.getLogger(name)
        if getattr(logger, "_imagerelay_configured", False):
            continue
        logger.handlers = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
        logger._imagerelay_configured = True  # type: ignore[attr-defined]
