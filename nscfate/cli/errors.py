"""Turn errors into one line on stderr and a non-zero exit, for every nscfate command."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

from nscfate.errors import user_error_in
from nscfate.redact import redact, redact_hydra_outputs, redact_logs


def friendly_errors(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a ``main``: NscfateError -> ``prog: error: message`` and exit 1, no traceback.

    Unexpected exceptions get the same one line (set NSCFATE_DEBUG=1 to see the traceback).
    """

    def wrap(main: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(main)
        def run(*args: Any, **kwargs: Any) -> Any:
            redact_logs()  # no password in a URI setting reaches a log, the terminal or a file
            redact_hydra_outputs()
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                sys.exit(130)
            except Exception as err:
                if os.environ.get("NSCFATE_DEBUG"):
                    raise
                print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
                sys.exit(1)

        return run

    return wrap


def one_line(err: BaseException) -> str:
    """Our own message if an NscfateError is anywhere in the cause chain (Hydra wraps errors raised
    inside ``instantiate``), else the exception's type and first line."""
    if (ours := user_error_in(err)) is not None:
        return str(ours)
    first = redact((str(err).strip().splitlines() or [""])[0])
    return f"{type(err).__name__}: {first} (NSCFATE_DEBUG=1 shows the traceback)"
