"""Keep passwords and tokens out of everything nscfate logs, stores or prints.

A URI setting may carry a secret (``postgresql://user:secret@db/mlflow``, ``...?password=secret``).
nscfate uses the URI as given to connect, but every copy that leaves the process (MLflow params and
tags, ``config.yaml``, checkpoints, the sweep summary, Hydra's saved configs, log lines, the
terminal, error messages) goes through :func:`redact` first: ``postgresql://user:***@db/mlflow``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MASK = "***"
#: ``scheme://user:password@`` (also as Hydra prints overrides, ``scheme\://user\:password@``)
#: and ``password=...``/``token=...`` query parameters.
_USERINFO = re.compile(
    r"(?P<head>\b[A-Za-z][\w+.-]*\\?://[^/\s:@\\]*)(?P<colon>\\?:)(?P<secret>[^/\s@]+)@"
)
_QUERY = re.compile(
    r"(?P<head>[?&;](?:password|passwd|pwd|token|access_token|secret|api_key|apikey)=)"
    r"(?P<secret>[^&;\s'\"]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """``text`` with the secret part of every URI in it replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['head']}{m['colon']}{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def has_secret(text: str) -> bool:
    """Whether ``text`` holds a URI secret that :func:`redact` would mask."""
    return redact(text) != text


def redact_values(node: Any) -> Any:
    """A copy of a nested config container (dicts, lists, scalars) with every string redacted."""
    if isinstance(node, dict):
        return {k: redact_values(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return type(node)(redact_values(v) for v in node)
    return redact(node) if isinstance(node, str) else node


def redact_files(paths: Iterable[Path]) -> None:
    """Rewrite text files that hold a secret (Hydra's saved configs), each atomically."""
    from nscfate.files import atomic_write

    for path in paths:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if has_secret(text):
            with atomic_write(path) as tmp:
                tmp.write_text(redact(text))


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Mask secrets in a log record's final message (in place)."""
    try:
        message = record.getMessage()
    except (TypeError, ValueError):  # a malformed record: leave it to logging's own error path
        return record
    if has_secret(message):
        record.msg, record.args = redact(message), None
    return record


def redact_hydra_outputs() -> None:
    """Mask secrets in what Hydra saved for this job (``.hydra/*.yaml``; ``multirun.yaml`` of a
    sweep), which records the command line as typed."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    saved = Path(hc.runtime.output_dir) / hc.output_subdir if hc.output_subdir else None
    files = list(saved.glob("*.yaml")) if saved else []
    if hc.mode == RunMode.MULTIRUN:
        files.append(Path(hc.sweep.dir) / "multirun.yaml")
    redact_files(files)


def redact_logs() -> None:
    """Mask secrets in every log record from now on, whatever logger or handler it goes to (a
    record factory survives Hydra reconfiguring its handlers for each job)."""
    make = logging.getLogRecordFactory()
    if getattr(make, "redacts", False):
        return

    def redacting_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(make(*args, **kwargs))

    redacting_factory.redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(redacting_factory)
