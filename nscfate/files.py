"""Writing files so that a crash never leaves a half-written one behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``out``; when the block succeeds it replaces ``out``.

    The temporary name keeps ``out``'s suffix (writers such as matplotlib pick the format from it);
    on failure it is removed and ``out`` is left as it was.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
