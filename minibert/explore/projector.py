"""Word embeddings as files for TensorBoard's Embedding Projector.

``vectors.tsv`` holds one row of tab-separated floats a word, no header;
``metadata.tsv`` holds the words, one a line: with one column it has no header, with
several (word, count) it starts with a header line, which is how the projector tells
the two apart. Both load as they are in projector.tensorflow.org ("Load": vectors, then
metadata), and ``projector_config.pbtxt`` lists them for ``tensorboard --logdir``.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor

from minibert.machinery.files import atomic_write

CONFIG_NAME = "projector_config.pbtxt"
TENSOR_NAME = "word_embeddings"
EPOCH_FOLDER = re.compile(r"epoch_(\d+)")
EVENTS_PREFIX = "events.out.tfevents"

# A backslash starts every escape, so it is escaped too and the words read back unchanged.
# Beside tab, \n and \r, str.splitlines() also breaks lines on the other characters listed.
_ESCAPES = str.maketrans(
    {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
    | {c: f"\\u{ord(c):04x}" for c in "\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"}
)


def escape_token(token: str) -> str:
    """Tabs and line breaks inside a token would shift every following row."""
    return token.translate(_ESCAPES)


def write_projector_files(
    out_dir: str | Path, vectors: Tensor, words: Sequence[str], **columns: Sequence[object]
) -> None:
    """Write ``vectors.tsv`` (N, D) and ``metadata.tsv`` into ``out_dir``: the N words, and any more ``columns``.

    ``write_projector_files(folder, vectors, words, count=counts)`` gives metadata of two
    columns under a header line ``word<TAB>count``; the words alone have no header.
    """
    table = {"word": words, **columns}
    for name, values in table.items():
        if len(values) != vectors.shape[0]:
            raise ValueError(f"{vectors.shape[0]} vectors and {len(values)} values of {name!r} must match")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "vectors.tsv", vector_rows(vectors))
    header = [tuple(table)] if columns else []  # the projector's rule: several columns have a header
    lines = [
        "\t".join(escape_token(str(value)) for value in row) + "\n"
        for row in [*header, *zip(*table.values())]
    ]
    _write_atomic(out_dir / "metadata.tsv", "".join(lines))


def vector_rows(vectors: Tensor, separator: str = "\t", prefixes: Sequence[str] | None = None) -> str:
    """One line of numbers a row of vectors (N, D), each after its prefix (say, the word) if given."""
    # 9 significant digits read back as exactly the same float32; one %-format a row is the fastest pure-Python way.
    row_format = separator.join(["%.9g"] * vectors.shape[1]) + "\n"
    rows = vectors.detach().float().cpu().tolist()
    if prefixes is None:
        return "".join(row_format % tuple(row) for row in rows)
    return "".join(prefix + separator + row_format % tuple(row) for prefix, row in zip(prefixes, rows))


def write_config(run_dir: Path, tensors: Sequence[tuple[str, Path]]) -> None:
    """(Re)write ``run_dir/projector_config.pbtxt``: one entry a (tensor name, folder of vectors.tsv and metadata.tsv).

    TensorBoard reads the paths relative to the run's folder, and the shape to lay out the tensor.
    """
    entries = []
    for tensor_name, folder in tensors:
        num_rows, dim = _tsv_shape(folder)
        # Path(".") for files in the run's own folder: it vanishes from the paths joined to it.
        files = folder.relative_to(run_dir)
        entries.append(
            "embeddings {\n"
            f'  tensor_name: "{tensor_name}"\n'
            f'  tensor_path: "{(files / "vectors.tsv").as_posix()}"\n'
            f'  metadata_path: "{(files / "metadata.tsv").as_posix()}"\n'
            f"  tensor_shape: {num_rows}\n  tensor_shape: {dim}\n"
            "}\n"
        )
    _write_atomic(run_dir / CONFIG_NAME, "".join(entries))


def write_run_config(folder: str | Path, tensor_name: str) -> None:
    """Make ``folder`` (holding vectors.tsv and metadata.tsv) a TensorBoard run of its own that lists them.

    TensorBoard's projector reads ``projector_config.pbtxt`` in each run, and a run is a folder
    with an event file: one almost empty event file is written once, so the files show up in
    the Projector tab of ``tensorboard --logdir`` on the folder or any folder above it (a
    ``lightning_logs/`` among them), under a run of the folder's own name, untouched by the
    training callbacks that rewrite the pbtxt of their own runs.
    """
    folder = Path(folder)
    write_config(folder, [(tensor_name, folder)])
    if not any(folder.glob(f"{EVENTS_PREFIX}*")):
        num_rows, dim = _tsv_shape(folder)
        make_run(
            folder, f"{num_rows} vectors of {dim} dimensions: see the Projector tab, tensor {tensor_name}"
        )


def epoch_folders(log_dir: str | Path) -> list[Path]:
    """The complete ``projector/epoch_E`` folders under ``log_dir``, by epoch."""
    found = []
    for folder in (Path(log_dir) / "projector").glob("epoch_*"):
        complete = (folder / "vectors.tsv").is_file() and (folder / "metadata.tsv").is_file()
        if EPOCH_FOLDER.fullmatch(folder.name) and complete:
            found.append(folder)
    return sorted(found, key=epoch_of)


def epoch_of(folder: Path) -> int:
    """The epoch of a ``projector/epoch_E`` folder."""
    return int(EPOCH_FOLDER.fullmatch(folder.name).group(1))


# TensorBoard's projector page lists a run's tensors by name and opens the first (after
# preferring tensors with metadata, then larger ones: every epoch's are alike in both). Each
# epoch's name starts with NEWEST_FIRST minus the epoch, so the newest sorts first.
NEWEST_FIRST = 9999


def epoch_tensor_name(epoch: int) -> str:
    """The tensor name of an epoch's embeddings: ``word_embeddings/9997 epoch 2``, the newest first in name order.

    A page reads the names once, when it loads, and asks for a tensor by name from then on:
    a name is never given to another epoch or taken back while its folder is kept, so a
    page loaded earlier can still open every epoch it lists. (TensorBoard also caches the
    last tensor it served under its name: a name given to other numbers could serve the old
    ones.) The epoch comes early in the name, where the closed drop-down, which shows about
    30 characters, can show it.
    """
    return f"{TENSOR_NAME}/{max(NEWEST_FIRST - epoch, 0):04d} epoch {epoch}"


def write_epochs_config(log_dir: str | Path, max_kept: int = 0) -> None:
    """(Re)write ``log_dir/projector_config.pbtxt`` with one tensor per epoch folder kept, newest first.

    It is rebuilt from the folders each time, so a resumed run keeps the entries of
    earlier epochs and never lists one twice. Folders that :func:`remove_old_epochs` is
    about to delete (``max_kept``) are left out already, so that the list never names a
    folder that is gone.
    """
    log_dir = Path(log_dir)
    folders = {epoch_of(folder): folder for folder in epoch_folders(log_dir)}
    kept = sorted(epochs_to_keep(list(folders), max_kept), reverse=True)  # newest first
    write_config(log_dir, [(epoch_tensor_name(epoch), folders[epoch]) for epoch in kept])


def epochs_to_keep(epochs: Sequence[int], max_kept: int) -> list[int]:
    """Which epochs' folders to keep: the newest, and every ``stride``-th epoch before it.

    ``stride`` is the smallest power of two that keeps at most ``max_kept`` folders (0: keep
    all). It depends on the newest epoch alone, so a resumed run deletes exactly what the
    run that never stopped would have, and a folder once deleted is never wanted again.
    """
    if not epochs or max_kept <= 0:
        return list(epochs)
    newest, stride = max(epochs), 1
    while newest // stride + 2 > max_kept and stride <= newest:  # epochs 0, s, 2s, ... and the newest
        stride *= 2
    return [e for e in epochs if e % stride == 0 or e == newest]


def remove_old_epochs(log_dir: str | Path, max_kept: int) -> None:
    """Delete the epoch folders that :func:`epochs_to_keep` does not keep."""
    folders = {epoch_of(f): f for f in epoch_folders(log_dir)}
    keep = set(epochs_to_keep(list(folders), max_kept))
    for epoch, folder in folders.items():
        if epoch not in keep:
            shutil.rmtree(folder)


def mark_newest_run(log_dir: str | Path, folder: Path) -> None:
    """Make TensorBoard read ``projector_config.pbtxt`` again: give ``folder`` an empty event file.

    TensorBoard's projector rereads its config only when the set of runs changes (a run is a
    folder holding an event file), never when the file itself changes. Each epoch's folder
    therefore becomes a run, with a file of no events, and the previous one stops being one,
    so the list of runs changes with every epoch and there is one such run at a time. The
    server lists the new epoch at its next reload (every 5 s by default); a projector page
    already open in a browser keeps the list it read when it loaded, until it is reloaded.
    """
    for old in Path(log_dir).glob(f"projector/epoch_*/{EVENTS_PREFIX}*"):
        if old.parent != folder:
            old.unlink(missing_ok=True)
    if not any(folder.glob(f"{EVENTS_PREFIX}*")):
        make_run(folder)


def make_run(folder: Path, text: str | None = None) -> None:
    """Write an event file into ``folder``, which makes it a TensorBoard run (holding ``text``, or nothing)."""
    from torch.utils.tensorboard import SummaryWriter  # slow to import: only where a run is made

    with SummaryWriter(log_dir=str(folder)) as writer:
        if text is not None:
            writer.add_text("projector", text)


def _tsv_shape(folder: Path) -> tuple[int, int]:
    """(rows, columns) of a folder's vectors, read from the small metadata file and one vector row."""
    with open(folder / "metadata.tsv", encoding="utf-8") as file:
        lines = file.read().split("\n")[:-1]  # the file ends with a newline
    header = 1 if lines and "\t" in lines[0] else 0  # a tab in the first line means several columns
    with open(folder / "vectors.tsv", encoding="utf-8") as file:
        dim = len(file.readline().split("\t"))
    return len(lines) - header, dim


def _write_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the new one, never a part (see :func:`minibert.machinery.files.atomic_write`)."""
    with atomic_write(path, encoding="utf-8", newline="\n") as file:
        file.write(text)
