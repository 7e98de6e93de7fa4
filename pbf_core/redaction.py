"""Secrets never leave the process: passwords in URIs are masked before any text is shown.

A tracking URI such as ``postgresql://pbf:s3cret@db/mlflow`` or ``https://user:token@host`` can
reach answers, logs, MLflow tags and Prefect artifacts through error messages; every such text
goes through :func:`redact` first.
"""

from __future__ import annotations

import logging
import re

#: A URI's ``scheme://``.
_SCHEME = r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)"
#: ``scheme://user:password@`` (the user part kept, the password replaced).
_USERINFO = re.compile(_SCHEME + r"(?P<user>[^:/@\s]*):[^@/\s]+@")
#: ``scheme://anything@`` (the whole user part).
_ANY_USERINFO = re.compile(_SCHEME + r"[^/@\s]*@")
#: ``password=...`` / ``token=...`` style query parameters.
_PARAM = re.compile(r"(?i)(?P<key>[?&;](?:password|passwd|pwd|token|secret|key)=)[^&;\s]+")

MASK = "***"


def redact(text: object) -> str:
    """``text`` with every URI password and secret query value replaced by ``***``."""
    shown = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", str(text))
    return _PARAM.sub(lambda m: f"{m['key']}{MASK}", shown)


def without_credentials(uri: str) -> str:
    """``uri`` without its ``user:password@`` part (for links a person opens and logs in to)."""
    return _ANY_USERINFO.sub(r"\g<scheme>", uri)


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record on with :func:`redact` applied to its text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown = redact(message)
        if shown != message:
            record.msg, record.args = shown, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = redact(text), None
        return True


def redact_logging(*names: str) -> int:
    """Add :class:`RedactingFilter` to every handler of the root logger and of ``names``.

    Returns:
        How many handlers got the filter (handlers that have it already are skipped).
    """
    added = 0
    for name in ("", *names):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(RedactingFilter())
                added += 1
    return added
