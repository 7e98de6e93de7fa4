"""Passwords in URIs never reach answers, logs, tags or artifacts."""

from __future__ import annotations

import logging

import pytest

from pbf_core.redaction import RedactingFilter, redact, redact_logging, without_credentials


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("http://pbf:s3cret@mlflow:5000/api", "http://pbf:***@mlflow:5000/api"),
        (
            "failed: postgresql+psycopg://u:p%40ss@db:5432/x and s3://k:v@bucket/y",
            "failed: postgresql+psycopg://u:***@db:5432/x and s3://k:***@bucket/y",
        ),
        ("https://:token@host/x", "https://:***@host/x"),
        ("https://host/x?a=1&token=abc&b=2", "https://host/x?a=1&token=***&b=2"),
        ("http://host:5000/no/secret", "http://host:5000/no/secret"),
        ("user@example.com wrote http://user@host/", "user@example.com wrote http://user@host/"),
    ],
)
def test_redact_masks_uri_secrets_only(text, shown):
    assert redact(text) == shown


def test_without_credentials_drops_the_whole_userinfo():
    assert (
        without_credentials("https://pbf:s3cret@mlflow.shop/#/runs") == "https://mlflow.shop/#/runs"
    )
    assert without_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_the_filter_redacts_messages_arguments_and_tracebacks():
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    logger = logging.getLogger("pbf.test-redaction")
    handler = Keep()
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("loading %s failed", "http://u:pw1@h/")
        try:
            raise RuntimeError("API request to https://u:pw2@h/api failed")
        except RuntimeError:
            logger.exception("model not loaded")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert "pw1" not in text and "pw2" not in text
    assert "http://u:***@h/" in text and "https://u:***@h/api" in text


def test_redact_logging_adds_the_filter_once():
    handler = logging.NullHandler()
    logger = logging.getLogger("pbf.test-redact-once")
    logger.addHandler(handler)
    try:
        assert redact_logging("pbf.test-redact-once") >= 1
        assert redact_logging("pbf.test-redact-once") == 0
        assert any(isinstance(f, RedactingFilter) for f in handler.filters)
    finally:
        logger.removeHandler(handler)
