"""Every command in the README and in docs/*.md runs, here or in CI, so the docs cannot go stale.

The commands are read from the ```bash blocks of the README, then of docs/*.md. Each runs in a
fresh folder laid out like a clone after its first download, with nothing beside it (users
have no ``../shared``). Training commands run as written, followed by arguments that shrink them
to seconds (LightningCLI lets later arguments win): 60 sentences of the fixture corpus, a
tiny model, one epoch.
"""

from __future__ import annotations

import configparser
import re
import shlex
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import REPO, SAMPLE_CORPUS, TEST_DATA, run_cli, script
from test_tensorboard import TensorBoard

from minibert.explore.commands import COMMANDS

pytestmark = pytest.mark.slow  # every case runs a command of the docs in a fresh folder

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
CI_SCRIPT = REPO / ".ci" / "run"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
EXPLORE_SUBCOMMANDS = COMMANDS

SHRINK = (
    "--data.corpus", "tests/data/sample.fr.txt", "--data.vocab_size", "500", "--data.seq_len", "12", "--data.batch_size", "16",
    "--model.embed_dim", "16", "--model.num_heads", "2", "--model.num_layers", "1", "--model.ff_dim", "32",
    "--data.max_sentences", "60", "--trainer.accelerator", "cpu", "--trainer.max_epochs", "1",
    "--trainer.val_check_interval", "1.0", "--trainer.check_val_every_n_epoch", "1", "--trainer.enable_progress_bar", "false",
)  # fmt: skip
# Placeholders of the multi-node example: one node of two CPU processes.
TORCHRUN_VALUES = {"N": "1", "G": "2", "R": "0", "HOST0": "127.0.0.1"}


def readme_commands(pages: tuple[Path, ...] = (README, *DOCS)) -> list[list[str]]:
    """The pages' shell commands as argument lists (continuation lines joined, comments dropped)."""
    text = "\n".join(page.read_text(encoding="utf-8") for page in pages)
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    lines = (
        "\n".join(blocks).replace("\\\n", " ").replace("$(which lightning)", "LIGHTNING_SCRIPT").splitlines()
    )
    return [argv for argv in (shlex.split(line, comments=True) for line in lines) if argv]


def steps(argv: list[str]) -> list[list[str]]:
    """``a && b`` -> ``[a, b]``."""
    parts: list[list[str]] = [[]]
    for arg in argv:
        parts.append([]) if arg == "&&" else parts[-1].append(arg)
    return parts


def clone(root: Path) -> Path:
    """A folder like a fresh clone after its first download (nothing beside it: users have no ``../shared``)."""
    repo = root / "minibert"
    for folder in ("configs", "benchmarks"):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(TEST_DATA, repo / "tests" / "data")
    (repo / "docs").mkdir()
    shutil.copy(TEST_DATA / "heldout.fr.txt", repo / "heldout.fr.txt")  # the README's held-out text file
    (repo / "data").mkdir()
    shutil.copy(
        SAMPLE_CORPUS, repo / "data" / "europarl-v7.fr-en.fr"
    )  # where the configs' download puts Europarl
    return repo


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone in which the README's first training command has run (shrunk): checkpoints, logs."""
    root = tmp_path_factory.mktemp("readme_trained")
    run_cli("fit", "--config", "configs/base.yaml", *SHRINK, cwd=clone(root))
    return root


def run(argv: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{shlex.join(argv)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    )
    return result


# --- one runner per kind of command -------------------------------------------------------


def check_pip(argv: list[str], workdir: Path) -> None:
    """CI installs the package itself; here: what is installed exists (the extras in setup.cfg)."""
    assert argv[:3] == ["pip", "install", "-e"], argv
    extras = configparser.ConfigParser()
    extras.read(REPO / "setup.cfg")
    match = re.fullmatch(r"\.(?:\[(\w+)\])?", argv[3])
    assert match, f"pip installs {argv[3]!r}, not this package"
    assert match[1] is None or match[1] in extras["options.extras_require"], (
        f"setup.cfg has no extra {match[1]!r}"
    )


def check_pytest(argv: list[str], workdir: Path) -> None:
    """The suite itself: CI runs the README's test command verbatim."""
    test_command = next(
        line for line in README.read_text(encoding="utf-8").splitlines() if line.endswith("&& pytest")
    )
    assert test_command in CI_SCRIPT.read_text(), (
        f".ci/run does not run the README's test command {test_command!r}"
    )


def check_quick_loop(argv: list[str], workdir: Path) -> None:
    """``pytest -m "not slow"`` leaves out some tests, the end-to-end ones, and keeps the rest."""
    # Collected in this repository (a clone's layout holds no tests), writing nothing there.
    collected = run(
        [sys.executable, "-m", *argv, "--collect-only", "-q", "-p", "no:cacheprovider"], cwd=REPO
    ).stdout
    match = re.search(r"(\d+)/(\d+) tests collected \((\d+) deselected\)", collected)
    assert match, collected[-2000:]
    kept, deselected = int(match[1]), int(match[3])
    assert kept > 0 and deselected > 0, match[0]


def run_lightning(argv: list[str], workdir: Path) -> None:
    """Training commands run as written, shrunk; a resumed fit gets a second epoch to train."""
    resume = argv[1] == "fit" and "--ckpt_path" in argv
    extra = ("--trainer.max_epochs", "2") if resume else ()
    last = workdir / "checkpoints" / "last.ckpt"
    steps_before = trained_steps(last) if resume else 0
    run([script(argv[0]), *argv[1:], *SHRINK, *extra], cwd=workdir)
    if argv[1] == "fit":
        assert last.is_file()
    if resume:
        assert trained_steps(last) == 2 * steps_before, "the resumed run did not train its whole second epoch"


def trained_steps(checkpoint: Path) -> int:
    return torch.load(checkpoint, weights_only=True)["global_step"]


def run_as_written(argv: list[str], workdir: Path) -> None:
    """Commands that only read a checkpoint run exactly as the README writes them."""
    executable = sys.executable if argv[0] == "python" else script(argv[0])
    run([executable, *argv[1:]], cwd=workdir)


def check_benchmark_options(argv: list[str], workdir: Path) -> None:
    """Benchmarks take minutes and the bench extra: their options must still exist."""
    usage = run([sys.executable, argv[1], "--help"], cwd=workdir).stdout
    for option in (arg for arg in argv[2:] if arg.startswith("--")):
        assert option in usage, f"{argv[1]} has no option {option}"


def run_tensorboard(argv: list[str], workdir: Path) -> None:
    """The server starts on the README's log directory and its projector lists the run."""
    assert argv[:2] == ["tensorboard", "--logdir"] and len(argv) == 3, argv
    server = TensorBoard(workdir / argv[2])
    try:
        server.wait_for_runs(["version_0"])
    finally:
        server.stop()


def check_ddp_is_tested(argv: list[str], workdir: Path) -> None:
    """Two-process DDP on the CPU is tests/test_ddp.py's subject: it runs these very arguments."""
    ddp_test = (REPO / "tests" / "test_ddp.py").read_text()
    for option, value in zip(argv[4::2], argv[5::2]):
        assert f'"{option}", "{value}"' in ddp_test, f"tests/test_ddp.py does not run {option} {value}"


def run_torchrun(argv: list[str], workdir: Path) -> None:
    """The multi-node example on one node: two CPU processes started by torchrun."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    values = {**TORCHRUN_VALUES, "29500": port, "LIGHTNING_SCRIPT": script("lightning")}
    command = [values.get(arg, arg) for arg in argv]
    command[0] = str(Path(sys.executable).parent / "torchrun")
    run([*command, *SHRINK], cwd=workdir)
    assert (workdir / "checkpoints" / "last.ckpt").is_file()


def runner(argv: list[str]) -> tuple[Callable[[list[str], Path], None], bool]:
    """How a README command is run, and whether it needs a trained run's checkpoint first."""
    needs_checkpoint = "checkpoints/last.ckpt" in argv or "last" in argv
    program = argv[0]
    if program == "pip":
        return check_pip, False
    if argv == ["pytest"]:
        return check_pytest, False
    if argv == ["pytest", "-m", "not slow"]:
        return check_quick_loop, False
    if program == "lightning" and argv[1] in EXPLORE_SUBCOMMANDS:
        return run_as_written, True
    if program == "lightning" and "--trainer.strategy" in argv:
        return check_ddp_is_tested, False
    if program in ("lightning", "minibert") and argv[1] in LIGHTNING_SUBCOMMANDS:
        return run_lightning, needs_checkpoint
    if program == "python" and argv[1].startswith("benchmarks/"):
        return (run_as_written, True) if "--ckpt_path" in argv else (check_benchmark_options, False)
    if program == "tensorboard":
        return run_tensorboard, True
    if program == "torchrun":
        return run_torchrun, False
    raise AssertionError(
        f"no test runs the README command {shlex.join(argv)!r}: teach tests/test_readme.py how"
    )


COMMANDS = [step for argv in readme_commands() for step in steps(argv)]


def test_every_step_of_ci_but_the_last_stops_it_when_it_fails():
    """Under ``set -e`` a failure before the last command of an ``&&`` list does not stop the script.

    ``ruff check . && ruff format --check .`` let a lint error through to a green test run; only
    the last line, whose status is the script's, may be such a list.
    """
    lines = [line for line in CI_SCRIPT.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert "set -euo pipefail" in lines
    assert [line for line in lines[:-1] if "&&" in line or "||" in line] == []


def test_the_readme_has_the_two_quickstart_commands():
    first, second = readme_commands((README,))[:2]
    assert " ".join(first) == "pip install -e . && lightning fit --config configs/base.yaml"
    assert " ".join(second) == "pip install -e .[test] && pytest"


@pytest.mark.parametrize("argv", COMMANDS, ids=[shlex.join(argv) for argv in COMMANDS])
def test_readme_command_runs(argv: list[str], trained: Path, tmp_path: Path) -> None:
    how, needs_checkpoint = runner(argv)
    if needs_checkpoint:
        shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
        workdir = tmp_path / "minibert"
    else:
        workdir = clone(tmp_path)
    how(argv, workdir)


def test_no_command_and_no_benchmark_default_reads_shared():
    """Users never have ../shared: no command of the pages names it, and no benchmark falls back on it."""
    assert not [argv for argv in COMMANDS if any("../shared" in arg for arg in argv)]
    for path in sorted((REPO / "benchmarks").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "../shared" not in text and '"shared"' not in text, path.name


def test_every_look_inside_command_is_run_from_the_docs():
    shown = {argv[1] for argv in COMMANDS if argv[0] == "lightning" and argv[1] in EXPLORE_SUBCOMMANDS}
    assert shown == set(EXPLORE_SUBCOMMANDS)
    assert any("--in-context" in argv for argv in COMMANDS) and any("word2vec" in argv for argv in COMMANDS)
