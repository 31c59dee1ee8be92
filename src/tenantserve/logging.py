"""Structured logs: one JSON object per line, with the request's model and tenant when known."""

from __future__ import annotations

import contextvars
import logging
import sys
import time

import orjson

model_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("model", default=None)


class JsonFormatter(logging.Formatter):
    """Machine-readable lines for log pipelines; the message stays human-readable."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": round(time.time(), 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        model = model_var.get()
        if model is not None:
            doc["model"] = model
            doc["tenant"] = model.split("/", 1)[0]
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def configure(level: str = "info", *, json: bool = True) -> None:
    """Send tenantserve's (and uvicorn's) logs to stderr, as JSON lines unless ``json=False``."""
    handler = logging.StreamHandler(sys.stderr)
    formatter: logging.Formatter = (
        JsonFormatter() if json else logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )
    handler.setFormatter(formatter)
    for name in ("tenantserve", "uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False
