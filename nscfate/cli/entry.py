"""How an nscfate command ends: its work done and saved, without the interpreter's teardown.

After ``main`` returns, a Python process that has imported torch, Lightning, MLflow and SQLAlchemy
spends 2-3 s tearing down millions of objects and modules (measured on ``nscfate-train``: 2.3 s
between the last exit handler and the process's end) that the operating system frees at once. A
sweep pays it in every worker and a short run pays it on top of its training. Every exit handler
still runs (MLflow's queues, logging, loader workers, temporary folders), then output is flushed and
the process ends with the command's exit code. Only the console scripts and ``python -m`` end this
way; in-process callers (tests, notebooks) call ``main`` and keep their interpreter.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn


def exit_code(stop: SystemExit | None) -> int:
    """The process exit code ``sys.exit`` would give: None -> 0, a number -> itself, a message ->
    printed to stderr and 1."""
    if stop is None or stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def run_then_exit(main: Callable[[], Any]) -> NoReturn:
    """Run a command's ``main`` and end the process as described above. An uncaught exception
    takes the usual path (traceback, normal teardown); so does a process that still has a
    non-daemon thread running, which a normal exit would wait for."""
    stop = None
    try:
        main()
    except SystemExit as raised:
        stop = raised
    code = exit_code(stop)
    others = [t for t in threading.enumerate() if t is not threading.main_thread()]
    if any(not t.daemon for t in others):
        sys.exit(code)
    atexit._run_exitfuncs()  # what a normal exit runs first: every registered handler
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing more to say
            stream.flush()
    os._exit(code)


def console_script(main: Callable[[], Any]) -> Callable[[], NoReturn]:
    """The console-script entry point of a command whose in-process entry is ``main``."""

    def entry() -> NoReturn:
        run_then_exit(main)

    entry.__doc__ = f"``{main.__module__}.main``, then the process ends without the teardown."
    return entry
