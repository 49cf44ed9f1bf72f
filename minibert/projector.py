"""Word embeddings as files for TensorBoard's Embedding Projector.

``vectors.tsv`` holds one row of tab-separated floats a word, no header;
``metadata.tsv`` holds the words, one a line: with one column it has no header, with
several (word, count) it starts with a header line, which is how the projector tells
the two apart. Both load as they are in projector.tensorflow.org.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from minibert.tokenizer import Vocabulary

CONFIG_NAME = "projector_config.pbtxt"
TENSOR_NAME = "word_embeddings"


def top_word_ids(vocab: Vocabulary, top_k: int) -> list[int]:
    """Ids of the ``top_k`` most frequent ordinary words (all of them when ``top_k`` is 0)."""
    first = vocab.num_specials
    last = len(vocab) if top_k == 0 else min(len(vocab), first + top_k)
    return list(range(first, last))  # the vocabulary is ordered by falling frequency


def escape_token(token: str) -> str:
    """Tabs and line breaks inside a token would shift every following row."""
    return token.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def write_projector_files(out_dir: str | Path, vectors: Tensor, words: Sequence[str], counts: Sequence[int] | None = None) -> None:
    """Write ``vectors.tsv`` and ``metadata.tsv`` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = vectors.detach().float().cpu().tolist()
    _write_atomic(out_dir / "vectors.tsv", "".join("\t".join(f"{v:.6g}" for v in row) + "\n" for row in rows))
    if counts is None:
        metadata = "".join(escape_token(w) + "\n" for w in words)
    else:
        metadata = "word\tcount\n" + "".join(f"{escape_token(w)}\t{c}\n" for w, c in zip(words, counts))
    _write_atomic(out_dir / "metadata.tsv", metadata)


def write_projector_config(log_dir: str | Path, folders: Sequence[Path]) -> None:
    """(Re)write TensorBoard's projector config listing one tensor per exported folder.

    It is rebuilt from the folders on disk each time, so a resumed run keeps the
    entries of earlier epochs and never lists one twice.
    """
    log_dir = Path(log_dir)
    entries = []
    for folder in folders:
        rel = folder.relative_to(log_dir).as_posix()
        num_rows = sum(1 for _ in open(folder / "vectors.tsv", encoding="utf-8"))
        with open(folder / "vectors.tsv", encoding="utf-8") as file:
            dim = len(file.readline().split("\t"))
        entries.append(
            "embeddings {\n"
            f'  tensor_name: "{TENSOR_NAME}/{folder.name}"\n'
            f'  tensor_path: "{rel}/vectors.tsv"\n'
            f'  metadata_path: "{rel}/metadata.tsv"\n'
            f"  tensor_shape: {num_rows}\n  tensor_shape: {dim}\n"
            "}\n"
        )
    _write_atomic(log_dir / CONFIG_NAME, "".join(entries))


def embedding_matrix(encoder: torch.nn.Module, source: str) -> Tensor:
    """The (V, D) matrix to export: input embeddings, or the output layer's rows."""
    if source == "input":
        return encoder.token_embedding.weight
    if source == "output":
        return encoder.lm_head.weight
    raise ValueError(f"embedding source must be 'input' or 'output', not {source!r}")


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
