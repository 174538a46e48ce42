"""Running the ``palimpsest`` command from tests: in a real process, or in-process."""

import os
import subprocess
import sys


def palimpsest_process(*args: str) -> subprocess.CompletedProcess:
    """The command as a user types it, in its own process (the installed entry point)."""
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run(
        [sys.executable, "-m", "palimpsest.cli", *args], capture_output=True, text=True, env=env
    )


def palimpsest(*args: str) -> subprocess.CompletedProcess:
    """The command in this process through typer's runner: the same parsing, errors and exit
    codes without paying an interpreter and torch import per call."""
    from typer.testing import CliRunner

    from palimpsest.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bug: show its traceback in the test report
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def one_error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == "", f"printed before the error: {done.stdout!r}"  # not even a blank line
    return lines[0]
