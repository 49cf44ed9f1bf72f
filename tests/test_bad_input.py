"""Every bad input of the README's "Bad input" table: the user sees one clear line, nothing is damaged.

Most rows run ``minibert.cli.main`` in-process (the code path of the command line, without
its seconds of imports); a few run the installed command to show it prints the same.
"""

from __future__ import annotations

import errno
import gzip
import re
import shutil
from fnmatch import fnmatch
from pathlib import Path

import pytest
from conftest import SAMPLE_CORPUS, run_cli

import minibert.machinery.files
from minibert.cli import main
from minibert.machinery.cache import cache_problem
from minibert.machinery.checkpoint import check_checkpoint_file

# A short step: bad input must be refused before it, and the one row that trains stops at once.
FIT = [
    "fit",
    "--config",
    "configs/tiny.yaml",
    "--trainer.max_steps",
    "1",
    "--trainer.num_sanity_val_steps",
    "0",
]

SESSION_WITH_BROKEN_TAG = """<CHAPTER ID=1>
Reprise de la séance
<SPEAKER ID=1 NAME="Mme la Présidente"
La séance est ouverte à neuf heures.
"""


def make_bad_files(folder: Path) -> None:
    (folder / "empty.yaml").write_text("")
    (folder / "unknown_key.yaml").write_text("model:\n  embed_dimm: 16\n")
    (folder / "empty.txt").write_text("")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (folder / "latin1.txt").write_bytes("Le député a parlé de l'été dernier.\n".encode("latin-1") * 40)
    packed = gzip.compress(SAMPLE_CORPUS.read_bytes())
    (folder / "truncated.txt.gz").write_bytes(packed[: len(packed) // 2])
    (folder / "session.txt").write_text(SESSION_WITH_BROKEN_TAG, encoding="utf-8")
    (folder / "folder.ckpt").mkdir()
    good = (folder / "checkpoints" / "last.ckpt").read_bytes()
    (folder / "truncated.ckpt").write_bytes(good[: len(good) // 2])
    (folder / "text.ckpt").write_text("not a checkpoint")
    (folder / "a_file").write_text("in the way of a folder")
    (folder / "checkpoints_in_a_file.yaml").write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n      init_args: {dirpath: a_file}\n"
    )
    lines = SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()
    (folder / "other_corpus.txt").write_text("\n".join(lines[: len(lines) // 2]) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def bad_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny run (its configs, corpus and checkpoints) beside a set of bad files."""
    folder = tmp_path_factory.mktemp("bad_input")
    for name in ("configs", "tests", "checkpoints", "lightning_logs", "data"):
        shutil.copytree(tiny_run / name, folder / name)
    make_bad_files(folder)
    return folder


# (what the user did, the arguments, what the last line of stderr must be: a regular expression)
ROWS = [
    (
        "config file missing",
        ["fit", "--config", "configs/nope.yaml"],
        r"error: config file configs/nope.yaml does not exist",
    ),
    ("config file empty", ["fit", "--config", "empty.yaml"], r"error: config file empty.yaml is empty"),
    (
        "unknown key in a config",
        ["fit", "--config", "configs/tiny.yaml", "--config", "unknown_key.yaml"],
        r"error: Subcommand 'fit' does not accept option 'model.embed_dimm'",
    ),
    (
        "unknown option",
        [*FIT, "--model.embed_dimm", "3"],
        r"error: unrecognized arguments: --model.embed_dimm 3",
    ),
    (
        "an option without its value",
        ["fit", "--config", "configs/tiny.yaml", "--data.corpus"],
        r"error: argument --data.corpus: expected one argument",
    ),
    (
        "no subcommand",
        [],
        r'error: expected "subcommand" to be one of \{fit,validate,test,predict\}, but it was not provided.',
    ),
    (
        "a misspelt subcommand",
        ["fot"],
        r"error: argument subcommand: invalid choice: 'fot' \(choose from 'fit', 'validate', 'test', 'predict'\)",
    ),
    (
        "a value of the wrong type",
        [*FIT, "--data.batch_size", "abc"],
        r"error: data.batch_size: expected int, got 'abc'",
    ),
    (
        "a value not among the choices",
        [*FIT, "--model.activation", "tanh"],
        r"error: model.activation: expected one of 'relu', 'gelu', got 'tanh'",
    ),
    (
        "a value that no type of a union takes",
        [*FIT, "--trainer.precision", "7"],
        r"error: trainer.precision: '7' is not one of the accepted values",
    ),
    (
        "an unknown option of the logger",
        [*FIT, "--trainer.logger.init_args.nope", "3"],
        r"error: trainer.logger: option 'nope' is not accepted",
    ),
    (
        "a trainer option that Lightning rejects",
        [*FIT, "--trainer.max_steps", "-5"],
        r"error: trainer.max_steps: `max_steps` must be a non-negative integer or -1 \(infinite steps\). You passed in -5.",
    ),
    (
        "an accelerator that does not exist",
        [*FIT, "--trainer.accelerator", "foo"],
        r"error: trainer.accelerator: You selected an invalid accelerator name: `accelerator='foo'`. Available names are: .*",
    ),
    (
        "the checkpoint folder is a file",
        [*FIT, "--config", "checkpoints_in_a_file.yaml"],
        r"error: checkpoint folder .*a_file is a file, not a folder; move it away or choose another path",
    ),
    (
        "the log folder is a file",
        [*FIT, "--trainer.logger.init_args.name", "a_file"],
        r"error: log folder a_file is a file, not a folder; move it away or choose another path",
    ),
    (
        "the log folder cannot be written",
        [*FIT, "--trainer.logger.init_args.save_dir", "/sys/minibert"],
        r"error: log folder /sys/minibert/lightning_logs: cannot write in /sys \(.*\); choose another path",
    ),
    (
        "export --out names a file",
        ["export", "--ckpt_path", "checkpoints/last.ckpt", "--out", "a_file"],
        r"error: export --out a_file is a file, not a folder; move it away or choose another path",
    ),
    (
        "export --out in a folder that cannot be written",
        ["export", "--ckpt_path", "checkpoints/last.ckpt", "--out", "/sys/minibert"],
        r"error: export --out /sys/minibert: cannot write in /sys \(.*\); choose another path",
    ),
    (
        "export --png names a folder",
        ["export", "--ckpt_path", "checkpoints/last.ckpt", "--png", "configs"],
        r"error: export --png configs is a folder; give a file name such as configs/map.png",
    ),
    (
        "export --top_k not a number",
        ["export", "--ckpt_path", "checkpoints/last.ckpt", "--top_k", "x"],
        r"error: argument --top_k: expected a whole number of at least 0, got 'x'",
    ),
    (
        "export without --ckpt_path",
        ["export", "--out", "x"],
        r"error: the following arguments are required: --ckpt_path",
    ),
    (
        "corpus missing",
        [*FIT, "--data.corpus", "nope.txt"],
        r"error: data.corpus: nope.txt does not exist .*",
    ),
    (
        "corpus empty",
        [*FIT, "--data.corpus", "empty.txt"],
        r"error: corpus empty.txt has no sentences \(it is empty or holds only blank lines\)",
    ),
    (
        "corpus binary",
        [*FIT, "--data.corpus", "binary.txt"],
        r"error: binary.txt:1: this looks like a binary file, not text .*",
    ),
    (
        "corpus truncated .gz",
        [*FIT, "--data.corpus", "truncated.txt.gz"],
        r"error: truncated.txt.gz: the gzip file is truncated or damaged .*",
    ),
    (
        "session file with a broken tag",
        [*FIT, "--data.corpus", "session.txt"],
        r"error: session.txt:3: broken session tag line .*\(expected <CHAPTER ID=..>, <SPEAKER ...> or <P>, closed by .>.\)",
    ),
    (
        "vocab_size too small",
        [*FIT, "--data.vocab_size", "3"],
        r"error: data.vocab_size=3 must be more than the 3 special tokens .*",
    ),
    ("seq_len too small", [*FIT, "--data.seq_len", "1"], r"error: data.seq_len=1 must be at least 2"),
    ("batch_size zero", [*FIT, "--data.batch_size", "0"], r"error: data.batch_size=0 must be at least 1"),
    (
        "batch_size larger than the corpus",
        [*FIT, "--data.batch_size", "100000"],
        r"error: data.corpus .* training samples, fewer than one batch .*",
    ),
    (
        "mask_prob above 1",
        [*FIT, "--data.mask_prob", "1.5"],
        r"error: data.mask_prob=1.5 must be a probability in \[0, 1\]",
    ),
    (
        "--ckpt_path to nothing",
        [*FIT, "--ckpt_path", "nope.ckpt"],
        r"error: checkpoint nope.ckpt does not exist",
    ),
    (
        "--ckpt_path to a directory",
        [*FIT, "--ckpt_path", "folder.ckpt"],
        r"error: checkpoint folder.ckpt is a directory; .*",
    ),
    (
        "--ckpt_path to a truncated file",
        [*FIT, "--ckpt_path", "truncated.ckpt"],
        r"error: checkpoint truncated.ckpt \(.* bytes\) is damaged: .*",
    ),
    (
        "--ckpt_path to a file that is not a checkpoint",
        [*FIT, "--ckpt_path", "text.ckpt"],
        r"error: checkpoint text.ckpt \(16 bytes\) is damaged: .*",
    ),
    (
        "resume on another corpus",
        [*FIT, "--ckpt_path", "last", "--data.corpus", "other_corpus.txt"],
        r"error: cannot resume from .*last.ckpt: the checkpoint's vocabulary has \d+ words, the data module built \d+ .*",
    ),
    (
        "resume with another model shape",
        [*FIT, "--ckpt_path", "last", "--model.num_layers", "3"],
        r"error: cannot resume from .*last.ckpt: model.num_layers: the checkpoint was trained with 2, this run asks for 3",
    ),
    (
        "resume by path with another model shape",
        [*FIT, "--ckpt_path", "checkpoints/last.ckpt", "--model.embed_dim", "32"],
        r"error: cannot resume from checkpoints/last.ckpt: model.embed_dim: the checkpoint was trained with 16, this run asks for 32",
    ),
    (
        "resume with another seq_len",
        [*FIT, "--ckpt_path", "last", "--data.seq_len", "10"],
        r"error: cannot resume from .*last.ckpt: model.seq_len: the checkpoint was trained with 12, this run asks for 10",
    ),
    (
        "resume with another batch_size",
        [*FIT, "--ckpt_path", "last", "--data.batch_size", "32"],
        r"error: cannot resume from .*last.ckpt: data.batch_size: the run was trained with 16, this run asks for 32; "
        r"a resumed run keeps the settings it was trained with \(they are in lightning_logs/version_0/config.yaml\): "
        r"drop the change, or start a new run with --overwrite true",
    ),
    (
        "resume with another mask_prob and lr",
        [*FIT, "--ckpt_path", "last", "--data.mask_prob", "0.4", "--model.lr", "0.01"],
        r"error: cannot resume from .*last.ckpt: data.mask_prob: the run was trained with 0.15, this run asks for 0.4; "
        r"model.lr: the run was trained with 0.002, this run asks for 0.01; a resumed run keeps .*",
    ),
    (
        "resume with nothing left to train: max_steps",
        [*FIT, "--ckpt_path", "last"],
        r"error: nothing to train: the run in .*checkpoints/last.ckpt is at step 84 and trainer.max_steps is 1; "
        r"continue it with a larger --trainer.max_steps and --ckpt_path last",
    ),
    (
        "resume with nothing left to train: max_epochs",
        ["fit", "--config", "configs/tiny.yaml", "--trainer.max_steps", "200", "--ckpt_path", "last"],
        r"error: nothing to train: the run in .*checkpoints/last.ckpt has trained 2 epoch\(s\) \(step 84\) and "
        r"trainer.max_epochs is 2; continue it with a larger --trainer.max_epochs \(-1: no limit\) and --ckpt_path last",
    ),
    (
        "a new run in a folder that holds a run",
        FIT,
        r"error: checkpoint folder .*checkpoints already holds a run \(last.ckpt, .*\): continue it with --ckpt_path last, "
        r"or replace it with --overwrite true \(its checkpoints are deleted, its logs kept\)",
    ),
    (
        "--overwrite with --ckpt_path",
        [*FIT, "--overwrite", "true", "--ckpt_path", "last"],
        r"error: --overwrite true starts a new run in place of the old one, --ckpt_path continues a run: give one of them",
    ),
    (
        # --overwrite deletes the old run's checkpoints only when training starts: here it never does.
        "val_check_interval larger than an epoch",
        [*FIT, "--overwrite", "true", "--trainer.val_check_interval", "1000"],
        r"error: trainer.val_check_interval=1000 is more than the 42 training batches of an epoch; nothing was trained: "
        r"give at most 42 \(or a share of the epoch, such as 0.5\), or count steps across epochs with "
        r"--trainer.check_val_every_n_epoch null",
    ),
    (
        "a negative learning rate",
        [*FIT, "--model.lr", "-1"],
        r"error: model.lr=-1.0 must be at least 0",
    ),
    (
        "a negative weight decay",
        [*FIT, "--model.weight_decay", "-0.1"],
        r"error: model.weight_decay=-0.1 must be at least 0",
    ),
    (
        "betas out of range",
        [*FIT, "--model.betas", "[0.9, 1.0]"],
        r"error: model.betas=\[0.9, 1.0\] must be two numbers in \[0, 1\)",
    ),
    (
        "negative warm-up steps",
        [*FIT, "--model.warmup_steps", "-5"],
        r"error: model.warmup_steps=-5 must be at least 0",
    ),
    (
        "min_lr_ratio above 1",
        [*FIT, "--model.min_lr_ratio", "2"],
        r"error: model.min_lr_ratio=2.0 must be in \[0, 1\]",
    ),
    ("top_k zero", [*FIT, "--model.top_k", "0"], r"error: model.top_k=0 must be at least 1"),
    (
        "a model too big for the memory",
        [*FIT, "--model.embed_dim", str(2**50), "--model.num_heads", "2"],
        r"error: out of memory while building the model \(one allocation of [\d,.]+ [PT]B\): nothing was written; "
        r"choose a smaller model \(model.embed_dim, model.ff_dim, model.num_layers, data.vocab_size\) and run again",
    ),
]


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_one_error_line(stderr: str, expected: str) -> None:
    """No traceback; one ``error:`` line matching ``expected``, last or followed by one ``see:`` hint."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    errors = [number for number, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert re.fullmatch(expected, lines[errors[0]]), lines[errors[0]]
    after = lines[errors[0] + 1 :]
    assert after == [] or (
        len(after) == 1 and after[0].startswith("see: minibert ") and after[0].endswith(" --help")
    ), after


@pytest.mark.parametrize(("args", "expected"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
def test_bad_input_is_one_clear_line(bad_dir, monkeypatch, capsys, args, expected):
    monkeypatch.chdir(bad_dir)
    checkpoints, logs, caches = (
        snapshot(bad_dir / name) for name in ("checkpoints", "lightning_logs", "data")
    )
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert_one_error_line(capsys.readouterr().err, expected)
    # Nothing written before was touched: no checkpoint overwritten, no log file or cache changed.
    assert snapshot(bad_dir / "checkpoints") == checkpoints
    assert {
        name: entry for name, entry in snapshot(bad_dir / "lightning_logs").items() if name in logs
    } == logs
    assert {name: entry for name, entry in snapshot(bad_dir / "data").items() if name in caches} == caches


def test_text_that_is_not_utf8_is_read_with_one_warning(bad_dir, monkeypatch, capsys, caplog):
    """Not an error: a long corpus with a few bad bytes should not stop a run. One warning says where."""
    monkeypatch.chdir(bad_dir)
    # No checkpoint either: it would replace the shared folder's last.ckpt, which later tests resume from.
    main(
        [
            *FIT,
            "--data.corpus",
            "latin1.txt",
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_checkpointing",
            "false",
        ]
    )
    warnings = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert warnings == [
        "latin1.txt: 40 line(s) are not valid UTF-8 (first: line 1); the bad bytes were replaced by U+FFFD"
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "row", ["unknown key in a config", "a value of the wrong type", "--ckpt_path to a truncated file"]
)
def test_the_installed_command_prints_the_same_line(bad_dir, row):
    _, args, expected = next(r for r in ROWS if r[0] == row)
    result = run_cli(*args, cwd=bad_dir, check=False)
    assert result.returncode == 2
    assert_one_error_line(result.stderr, expected)


def test_help_still_prints_the_whole_usage(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "--help"])
    assert stop.value.code == 0
    assert "--data.batch_size" in capsys.readouterr().out


# --- a full disk -----------------------------------------------------------------------------

RESUME = [
    *FIT,
    "--ckpt_path",
    "last",
    "--trainer.max_epochs",
    "3",
    "--trainer.max_steps",
    "100",
]  # the tiny run ended at step 84

# (what filled up, the files whose writes fail, the arguments, the error line)
FULL_DISK_ROWS = [
    (
        "during a cache build",
        "*.npy",
        [*FIT, "--data.vocab_size", "400"],
        r"error: cannot write the cache data/cache/sample.fr.txt-\w+ \(No space left on device\); nothing was left half-written: "
        r"free some space, or choose another data.data_dir, and run again",
    ),
    (
        "during a checkpoint",
        "*.ckpt",
        RESUME,
        r"error: cannot write checkpoint .*/checkpoints/[^/]+.ckpt \(No space left on device\); the checkpoints already there "
        r"are unchanged: free some space, then continue with the same command and --ckpt_path last",
    ),
    (
        "during an export",
        "*.tsv",
        ["export", "--ckpt_path", "checkpoints/last.ckpt", "--out", "exported"],
        r"error: export --out exported: cannot write \(No space left on device\); files already there are unchanged",
    ),
]


def fill_the_disk(monkeypatch: pytest.MonkeyPatch, pattern: str) -> None:
    """From now on, writing a file named like ``pattern`` (through :func:`atomic_write`) fails half-way with ENOSPC."""

    class FullFile:
        def __init__(self, file):
            self.file = file

        def write(self, data):
            self.file.write(data[: len(data) // 2])  # part of it reaches the disk, then no more room
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def full_open(path, *args, **kwargs):
        file = open(path, *args, **kwargs)
        return FullFile(file) if fnmatch(Path(path).name, f".{pattern}.*.tmp") else file

    monkeypatch.setattr(minibert.machinery.files, "open", full_open, raising=False)


def temporary_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]


@pytest.mark.parametrize(
    ("pattern", "args", "expected"),
    [row[1:] for row in FULL_DISK_ROWS],
    ids=[row[0] for row in FULL_DISK_ROWS],
)
def test_a_full_disk_is_one_line_and_damages_nothing(
    bad_dir, tmp_path, monkeypatch, capsys, pattern, args, expected
):
    run = tmp_path / "run"
    shutil.copytree(bad_dir, run)
    monkeypatch.chdir(run)
    main(["export", "--ckpt_path", "checkpoints/last.ckpt", "--out", "exported"])  # a good export to keep
    before = {name: entry for name, entry in snapshot(run).items() if not name.startswith("lightning_logs")}
    fill_the_disk(monkeypatch, pattern)
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert_one_error_line(capsys.readouterr().err, expected)
    assert {name: entry for name, entry in snapshot(run).items() if name in before} == before
    assert temporary_files(run) == []
    caches = list((run / "data" / "cache").iterdir())
    assert [cache_problem(cache) for cache in caches] == [None] * len(caches)


def test_a_full_disk_during_a_projector_export_is_one_warning_and_training_goes_on(
    bad_dir, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    shutil.copytree(bad_dir, run)
    monkeypatch.chdir(run)
    projector = run / "lightning_logs" / "version_0" / "projector"
    before = snapshot(projector)
    fill_the_disk(monkeypatch, "*.tsv")
    with pytest.warns(
        UserWarning
    ) as warned:  # from step 80 to 83 (epoch 1: steps 42 to 84): fit's end exports epoch 1 again
        main([*FIT, "--ckpt_path", "checkpoints/step=80.ckpt", "--trainer.max_steps", "83"])  # no SystemExit
    reports = [str(w.message) for w in warned if "EmbeddingProjector" in str(w.message)]
    assert len(reports) == 1 and "epoch_1" in reports[0] and "No space left on device" in reports[0]
    assert snapshot(projector) == before and temporary_files(run) == []  # epoch 1's earlier files are whole
    assert check_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"] == 83  # training went on
