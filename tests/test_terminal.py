"""The installed command in a pipe that closes, and on a terminal that cannot show "é": no traceback, ever."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import script

pytestmark = pytest.mark.slow  # each case starts the command: seconds of imports


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run / "checkpoints" / "last.ckpt"


def run(argv: list[str], cwd, **env: str) -> subprocess.CompletedProcess:
    """The installed command, its output as bytes: what the terminal receives, whatever its encoding."""
    return subprocess.run(
        [script("minibert"), *argv], cwd=cwd, capture_output=True, timeout=300, env={**os.environ, **env}
    )


def test_a_reader_that_stops_early_ends_the_command_quietly_with_141(checkpoint, tmp_path):
    """`minibert neighbors ... | head -1`: the rest of the output has nowhere to go; Unix tools end with 128 + SIGPIPE."""
    words = " ".join(["la", "le", "de", "séance", "commission"] * 40)  # far more than a pipe holds (64 KiB)
    shell = f'"{script("minibert")}" neighbors --ckpt_path "{checkpoint}" {words} --k 100 | head -1; echo "exit ${{PIPESTATUS[0]}}"'
    result = subprocess.run(["bash", "-c", shell], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.stdout.splitlines() == ["la:", "exit 141"]
    assert result.stderr == ""  # no traceback, no "Exception ignored" at exit


def test_a_pipe_closed_before_anything_is_written(checkpoint, tmp_path):
    process = subprocess.Popen(
        [script("minibert"), "neighbors", "--ckpt_path", str(checkpoint), "la"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # long before the command has imported torch and can print
    assert process.wait(timeout=300) == 141
    assert process.stderr.read() == b""
    process.stderr.close()


@pytest.mark.parametrize(
    "env",
    [
        {"PYTHONIOENCODING": "ascii"},
        # A C locale with Python's own fixes for it turned off: ASCII output, and arguments decoded as ASCII.
        {"LANG": "C", "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"},
    ],
    ids=["PYTHONIOENCODING=ascii", "LANG=C"],
)
def test_a_terminal_that_cannot_show_accents_gets_escapes(checkpoint, tmp_path, env):
    env = {**env, "PYTHONIOENCODING": env.get("PYTHONIOENCODING", "")}
    result = run(["neighbors", "--ckpt_path", str(checkpoint), "séance", "--k", "3"], tmp_path, **env)
    assert result.returncode == 0 and result.stderr == b""
    lines = result.stdout.decode("ascii").splitlines()  # nothing but ASCII reached the terminal
    assert lines[0] == "s\\xe9ance:" and len(lines) == 4
    fill = run(["fill-mask", "--ckpt_path", str(checkpoint), "la séance <mask> lieu ."], tmp_path, **env)
    assert fill.returncode == 0 and "la s\\xe9ance <mask> lieu ." in fill.stdout.decode("ascii")
    unknown = run(["neighbors", "--ckpt_path", str(checkpoint), "zébulon"], tmp_path, **env)
    assert unknown.returncode == 2 and unknown.stderr.decode("ascii").splitlines() == [
        "error: 'z\\xe9bulon' is not in the vocabulary (143 words): try another word"
    ]
    assert run(["fill-mask", "--help"], tmp_path, **env).returncode == 0  # the help text has accents too
