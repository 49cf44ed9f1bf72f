"""The projector files: format rules, atomic writes, the TensorBoard config, and the tiny run's files."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from google.protobuf import text_format
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from minibert.explore.embeddings import embedding_matrix, top_word_ids
from minibert.explore.projector import (
    epoch_folders,
    epoch_tensor_name,
    epochs_to_keep,
    escape_token,
    mark_newest_run,
    remove_old_epochs,
    write_epochs_config,
    write_projector_files,
)
from minibert.machinery import files
from minibert.model import Encoder, EncoderConfig
from minibert.tokenizer import Vocabulary

ODD_WORDS = [
    "tab\there",
    "line\nbreak",
    "cr\rhere",
    "back\\slash",
    "form\x0cfeed",
    "sep\u2028arator",
    "plain",
]


EMBEDDINGS_KEY = "encoder.token_embedding.weight"  # the input word embeddings in a checkpoint's state_dict


def tiny_top_k() -> int:
    """The callback's top_k in configs/tiny.yaml, the config of the tiny_run fixture."""
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text(encoding="utf-8"))
    return next(
        c["init_args"]["top_k"]
        for c in config["trainer"]["callbacks"]
        if c["class_path"].endswith("EmbeddingProjector")
    )


def unescape(field: str) -> str:
    """The reader's side of escape_token, written independently: one escape at a time, left to right."""
    simple = {"\\": "\\", "t": "\t", "n": "\n", "r": "\r"}
    return re.sub(
        r"\\(u[0-9a-f]{4}|.)", lambda m: chr(int(m[1][1:], 16)) if len(m[1]) == 5 else simple[m[1]], field
    )


def read_vectors(path: Path) -> torch.Tensor:
    """vectors.tsv as the projector reads it: every line a row of tab-separated floats."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "", "the file ends with a newline"
    return torch.tensor([[float(v) for v in line.split("\t")] for line in lines[:-1]], dtype=torch.float32)


def read_metadata(path: Path) -> tuple[list[str] | None, list[list[str]]]:
    """(header or None, rows of fields), splitting on \\n and \\t only, as the projector does."""
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == ""
    rows = [line.split("\t") for line in lines[:-1]]
    header = rows.pop(0) if len(rows[0]) > 1 else None  # the projector's rule: several columns => a header
    return header, rows


def test_vectors_have_no_header_and_read_back_as_the_same_float32(tmp_path):
    vectors = torch.randn(7, 5) * torch.logspace(-8, 8, 5)  # tiny and huge values alike
    write_projector_files(tmp_path, vectors, [f"w{i}" for i in range(7)])
    assert torch.equal(read_vectors(tmp_path / "vectors.tsv"), vectors)


def test_one_column_metadata_has_no_header(tmp_path):
    write_projector_files(tmp_path, torch.zeros(2, 3), ["la", "commission"])
    assert (tmp_path / "metadata.tsv").read_text(encoding="utf-8") == "la\ncommission\n"


def test_metadata_with_counts_has_a_header(tmp_path):
    write_projector_files(tmp_path, torch.zeros(2, 3), ["la", "commission"], count=[120, 7])
    assert (tmp_path / "metadata.tsv").read_text(encoding="utf-8") == "word\tcount\nla\t120\ncommission\t7\n"


@pytest.mark.parametrize("counts", [None, list(range(len(ODD_WORDS)))])
def test_tabs_and_line_breaks_inside_words_never_shift_rows(tmp_path, counts):
    columns = {} if counts is None else {"count": counts}
    write_projector_files(tmp_path, torch.zeros(len(ODD_WORDS), 2), ODD_WORDS, **columns)
    text = (tmp_path / "metadata.tsv").read_text(encoding="utf-8")
    assert len(text.splitlines()) == len(ODD_WORDS) + (counts is not None)  # even Python's widest line split
    header, rows = read_metadata(tmp_path / "metadata.tsv")
    assert all(len(row) == (1 if counts is None else 2) for row in rows)
    assert [unescape(row[0]) for row in rows] == ODD_WORDS
    assert header == (None if counts is None else ["word", "count"])


def test_escape_token_leaves_ordinary_words_alone():
    assert escape_token("européenne") == "européenne"
    assert escape_token("a\tb") == "a\\tb" and escape_token("a\\tb") == "a\\\\tb"  # never confused


def test_mismatched_lengths_are_refused(tmp_path):
    with pytest.raises(ValueError, match="must match"):
        write_projector_files(tmp_path, torch.zeros(3, 2), ["a", "b"])


def test_an_interrupted_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    write_projector_files(tmp_path, torch.ones(2, 2), ["a", "b"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(files.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_projector_files(tmp_path, torch.zeros(2, 2), ["c", "d"])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_files_get_the_permissions_of_any_new_file(tmp_path):
    write_projector_files(tmp_path, torch.ones(1, 2), ["a"])
    (tmp_path / "plain.txt").write_text("a")  # made the ordinary way, through the umask
    mode = (tmp_path / "plain.txt").stat().st_mode & 0o777
    assert (
        (tmp_path / "vectors.tsv").stat().st_mode & 0o777
        == (tmp_path / "metadata.tsv").stat().st_mode & 0o777
        == mode
    )


def test_top_word_ids_leave_out_special_tokens():
    vocab = Vocabulary(["de", "la", "le"], [30, 20, 10])
    assert top_word_ids(vocab, 2) == [3, 4]
    assert top_word_ids(vocab, 0) == top_word_ids(vocab, 99) == [3, 4, 5]


def test_output_embeddings_are_the_input_ones_only_when_tied():
    settings = dict(vocab_size=10, seq_len=4, embed_dim=8, num_heads=2, num_layers=1, ff_dim=16)
    untied = Encoder(EncoderConfig(**settings, tie_embeddings=False))
    tied = Encoder(EncoderConfig(**settings, tie_embeddings=True))
    assert embedding_matrix(tied, "output") is embedding_matrix(tied, "input")
    assert not torch.equal(embedding_matrix(untied, "output"), embedding_matrix(untied, "input"))
    with pytest.raises(ValueError, match="'input' or 'output'"):
        embedding_matrix(untied, "hidden")


def parse_config(log_dir: Path) -> ProjectorConfig:
    return text_format.Parse(
        (log_dir / "projector_config.pbtxt").read_text(encoding="utf-8"), ProjectorConfig()
    )


def test_config_lists_complete_epoch_folders_in_order_once(tmp_path):
    for epoch, rows in [(10, 4), (2, 3)]:
        write_projector_files(
            tmp_path / "projector" / f"epoch_{epoch}", torch.zeros(rows, 5), ["w"] * rows, count=[1] * rows
        )
    write_projector_files(
        tmp_path / "projector" / "epoch_3", torch.zeros(2, 5), ["w"] * 2
    )  # one-column metadata
    (tmp_path / "projector" / "epoch_4").mkdir()  # an export that never finished
    (tmp_path / "projector" / "epoch_4" / "vectors.tsv").write_text("1\t2\n")
    (tmp_path / "projector" / "epoch_x").mkdir()
    write_epochs_config(tmp_path)
    write_epochs_config(tmp_path)  # rewriting (a resumed run) lists nothing twice
    config = parse_config(tmp_path)
    # Newest first, and named to sort first: the projector opens the first name in sorted order.
    names = [e.tensor_name for e in config.embeddings]
    assert names == [
        "word_embeddings/9989 epoch 10",
        "word_embeddings/9996 epoch 3",
        "word_embeddings/9997 epoch 2",
    ]
    assert sorted(names)[0] == names[0]
    assert [list(e.tensor_shape) for e in config.embeddings] == [[4, 5], [2, 5], [3, 5]]
    for embedding in config.embeddings:  # paths are relative to the config's folder, as TensorBoard wants
        assert (tmp_path / embedding.tensor_path).is_file() and (tmp_path / embedding.metadata_path).is_file()
    assert epoch_folders(tmp_path) == [tmp_path / "projector" / f"epoch_{e}" for e in (2, 3, 10)]


def frontend_order(embeddings: list[dict]) -> list[str]:
    """The tensor names as TensorBoard's projector page lists them, the one it opens first.

    Its data panel (tensorboard/plugins/projector/tf_projector_plugin/projector_binary.js)
    keeps the 2-D tensors of more than one row and column, then sorts them: those with
    metadata first, then those whose name does not hold "/Adagrad" (optimiser slots), then
    the larger (more rows) first, then by name (JavaScript's string order). It opens the first.
    """
    shapes = {e["tensorName"]: e.get("tensorShape", []) for e in embeddings}
    names = [n for n, shape in shapes.items() if len(shape) == 2 and shape[0] > 1 and shape[1] > 1]
    has_metadata = {e["tensorName"]: bool(e.get("metadataPath")) for e in embeddings}
    return sorted(
        names,
        key=lambda n: (not has_metadata[n], "/Adagrad" in n, -shapes[n][0], n.encode("utf-16-be")),
    )


def test_epoch_names_list_the_newest_first_show_the_epoch_and_never_change():
    names = [epoch_tensor_name(epoch) for epoch in range(1000)]
    assert names[2] == "word_embeddings/9997 epoch 2" == epoch_tensor_name(2)  # the same every time
    assert len(set(names)) == len(names)
    shape = [3000, 256]
    listed = [{"tensorName": n, "tensorShape": shape, "metadataPath": "m.tsv"} for n in names]
    assert frontend_order(listed) == names[::-1]  # newest first, whatever order the config gives
    for epoch, name in enumerate(names):
        # The closed drop-down shows about 30 characters; the page puts the name in its URLs unquoted.
        assert f"epoch {epoch}" in name[:30] and re.fullmatch(r"[a-z_/0-9 ]+", name)


def test_the_config_never_lists_a_folder_about_to_be_deleted(tmp_path):
    for epoch in range(6):
        write_projector_files(tmp_path / "projector" / f"epoch_{epoch}", torch.zeros(2, 3), ["a", "b"])
    write_epochs_config(tmp_path, max_kept=3)
    listed = [e.tensor_name for e in parse_config(tmp_path).embeddings]
    assert (
        listed
        == [epoch_tensor_name(e) for e in (5, 4, 0)]
        == [epoch_tensor_name(e) for e in epochs_to_keep(range(6), 3)][::-1]
    )
    remove_old_epochs(tmp_path, 3)
    assert [e.tensor_path for e in parse_config(tmp_path).embeddings] == [
        f"projector/epoch_{e}/vectors.tsv" for e in (5, 4, 0)
    ]
    assert [f.name for f in epoch_folders(tmp_path)] == ["epoch_0", "epoch_4", "epoch_5"]


def test_tiny_run_files_are_the_checkpoint_embeddings(tiny_run):
    """The last epoch's files parse back to exactly the embeddings saved in last.ckpt."""
    checkpoint = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    matrix = checkpoint["state_dict"][EMBEDDINGS_KEY]
    words, counts = checkpoint["vocabulary"]["words"], checkpoint["vocabulary"]["counts"]
    version = tiny_run / "lightning_logs" / "version_0"
    assert [f.name for f in epoch_folders(version)] == ["epoch_0", "epoch_1"]
    top_k = tiny_top_k()
    folder = version / "projector" / "epoch_1"
    assert torch.equal(read_vectors(folder / "vectors.tsv"), matrix[3 : 3 + top_k])
    header, rows = read_metadata(folder / "metadata.tsv")
    assert header == ["word", "count"]
    assert rows == [[w, str(c)] for w, c in zip(words[:top_k], counts[:top_k])]
    assert [list(e.tensor_shape) for e in parse_config(version).embeddings] == [[top_k, matrix.shape[1]]] * 2


@pytest.mark.parametrize(
    "newest, max_kept, kept",
    [
        (3, 25, [0, 1, 2, 3]),
        (23, 25, list(range(24))),  # 24 folders: all fit
        (24, 25, list(range(0, 25, 2))),  # 26 would not: every 2nd epoch, the newest among them
        (25, 25, [*range(0, 25, 2), 25]),
        (80, 25, [*range(0, 81, 4)]),  # base.yaml: 81 epochs -> 21 folders
        (133, 25, [*range(0, 129, 8), 133]),
        (9, 2, [0, 9]),
        (9, 0, list(range(10))),  # 0 keeps all
    ],
)
def test_epochs_to_keep_are_the_newest_and_evenly_spaced_ones(newest, max_kept, kept):
    assert epochs_to_keep(list(range(newest + 1)), max_kept) == kept
    assert len(kept) <= max_kept or max_kept == 0


def test_keeping_depends_on_the_newest_epoch_only(tmp_path):
    """Exporting epoch by epoch, or resuming with a gap, leaves the same folders: never one deleted then wanted."""
    for epoch in range(40):
        write_projector_files(tmp_path / "projector" / f"epoch_{epoch}", torch.zeros(2, 3), ["a", "b"])
        remove_old_epochs(tmp_path, 10)
        on_disk = [int(f.name.split("_")[1]) for f in epoch_folders(tmp_path)]
        assert on_disk == epochs_to_keep(list(range(epoch + 1)), 10) and len(on_disk) <= 10


def test_only_the_newest_epoch_folder_is_a_tensorboard_run(tmp_path):
    """Its event file changes the set of runs, which is what makes a running TensorBoard read the config again."""
    for epoch in range(3):
        folder = tmp_path / "projector" / f"epoch_{epoch}"
        write_projector_files(folder, torch.zeros(2, 3), ["a", "b"])
        mark_newest_run(tmp_path, folder)
        runs = sorted({p.parent.name for p in tmp_path.rglob("events.out.tfevents*")})
        assert runs == [f"epoch_{epoch}"]
    mark_newest_run(tmp_path, folder)  # again (a resumed run ending in the same epoch): still one file
    assert len(list(folder.glob("events.out.tfevents*"))) == 1
