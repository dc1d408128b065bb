"""Secrets out of everything the service says: error reasons, responses, /readyz, /model, logs.

`redact(text)` is the one function for it. It hides the values of credential options in Feast
connection strings (`host:port,password=...`), credentials in URLs (`redis://user:pass@host`) and
`Bearer` tokens. `RedactingFilter` applies it to log records (message, arguments, traceback), so
a record is clean for every handler, whichever one formats it.
"""

from __future__ import annotations

import logging
import re

HIDDEN = "***"
_CREDENTIAL_OPTION = re.compile(
    r"(?i)\b(password|passwd|pwd|username|token|secret|api[_-]?key)(\s*[=:]\s*)([^,\s;&)'\"]+)")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_BEARER = re.compile(r"(?i)\b(bearer\s+)[^\s,;'\"]+")


def redact(text: object) -> str:
    """`text` as a string with every credential replaced by `***`."""
    text = str(text)
    if not text:
        return text
    text = _URL_CREDENTIALS.sub(rf"\1{HIDDEN}@", text)
    text = _BEARER.sub(rf"\1{HIDDEN}", text)
    return _CREDENTIAL_OPTION.sub(rf"\1\2{HIDDEN}", text)


class RedactingFilter(logging.Filter):
    """Rewrites a record in place: its message with the arguments merged, and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.msg, record.args = redact(message), None
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        record.exc_info = None  # the redacted exc_text is what handlers print
        return True


REDACTING_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` whose records are redacted before any handler sees them."""
    logger = logging.getLogger(name)
    if REDACTING_FILTER not in logger.filters:
        logger.addFilter(REDACTING_FILTER)
    return logger


def redact_handlers(*logger_names: str) -> None:
    """Add the filter to the handlers of these loggers (the root logger: ''), for records of
    libraries (uvicorn, Feast, redis) that do not go through `get_logger`."""
    for name in logger_names:
        for handler in logging.getLogger(name).handlers:
            if REDACTING_FILTER not in handler.filters:
                handler.addFilter(REDACTING_FILTER)
