"""Secrets in URIs are masked wherever nscfate writes or prints a URI."""

from __future__ import annotations

import logging

import pytest

from nscfate.errors import NscfateError
from nscfate.redact import redact, redact_logs, redact_values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "postgresql+psycopg2://me:s3cret@db:5432/mlflow",
            "postgresql+psycopg2://me:***@db:5432/mlflow",
        ),
        ("http://me:s3cret@mlflow.lab:5000", "http://me:***@mlflow.lab:5000"),
        ("x=postgresql\\://me\\:s3cret@db\\:5432/o", "x=postgresql\\://me\\:***@db\\:5432/o"),
        (
            "postgresql://me@db/o?password=s3cret&sslmode=require",
            "postgresql://me@db/o?password=***&sslmode=require",
        ),
        ("sqlite:////home/lab/mlruns/mlflow.db", "sqlite:////home/lab/mlruns/mlflow.db"),
        ("http://mlflow.lab:5000/#/experiments/1", "http://mlflow.lab:5000/#/experiments/1"),
    ],
)
def test_redact_masks_only_the_secret(text, expected):
    assert redact(text) == expected


def test_configs_errors_and_log_records_are_redacted():
    cfg = {"tracking": {"uri": "postgresql://me:s3cret@db/m"}, "list": ["http://a:b@c"], "n": 3}
    assert redact_values(cfg) == {
        "tracking": {"uri": "postgresql://me:***@db/m"},
        "list": ["http://a:***@c"],
        "n": 3,
    }
    assert "s3cret" not in str(NscfateError("tracking.uri=postgresql://me:s3cret@db/m is down"))
    redact_logs()
    record = logging.getLogRecordFactory()(
        "x", logging.INFO, "f", 1, "run in %s", ("http://me:s3cret@h",), None
    )
    assert record.getMessage() == "run in http://me:***@h"
