"""How a command's process ends (``nscfate.cli.entry``): every exit handler runs and every log and
output line is written, the exit code is the command's, and the interpreter's teardown is skipped."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = """
import atexit, logging, sys, tempfile, threading, time
from pathlib import Path
from nscfate.cli.entry import run_then_exit

out = Path(sys.argv[1])
logging.basicConfig(filename=out / "log.txt", level=logging.INFO)
atexit.register(lambda: (out / "atexit.txt").write_text("ran"))
kept = tempfile.TemporaryDirectory(dir=out)  # cleaned by its finalizer at exit
(out / "tmpdir.txt").write_text(kept.name)

class Torn:
    def __del__(self):
        print("torn down", flush=True)

TORN = Torn()  # a module global: only the interpreter's teardown deletes it

def main():
    logging.info("logged before exit")
    sys.stdout.write("unflushed output")  # a pipe buffers it
    if sys.argv[2] == "thread":
        threading.Thread(target=lambda: (time.sleep(0.5), (out / "thread.txt").write_text("done"))).start()
    elif sys.argv[2] != "return":
        sys.exit(int(sys.argv[2]) if sys.argv[2].isdigit() else sys.argv[2])

run_then_exit(main)
"""


def _run(tmp_path: Path, how: str) -> subprocess.CompletedProcess:
    script = tmp_path / "command.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path), how], capture_output=True, text=True
    )


@pytest.mark.parametrize(("how", "code"), [("return", 0), ("0", 0), ("3", 3), ("bad input", 1)])
def test_a_command_ends_with_its_code_its_output_and_its_exit_handlers(tmp_path, how, code):
    proc = _run(tmp_path, how)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.startswith("unflushed output")
    assert "logged before exit" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert not Path((tmp_path / "tmpdir.txt").read_text()).exists()  # finalizers ran
    assert "torn down" not in proc.stdout  # the teardown was skipped
    assert ("bad input" in proc.stderr) == (how == "bad input")


def test_a_running_thread_is_waited_for_as_a_normal_exit_would(tmp_path):
    proc = _run(tmp_path, "thread")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "thread.txt").read_text() == "done"
