"""Looking into a trained checkpoint: ``export``, ``neighbors`` and ``fill-mask``.

These commands read nothing but the checkpoint file (weights, hyper-parameters and the
vocabulary saved beside them), so they work on any ``.ckpt`` without the corpus::

    lightning export --ckpt_path checkpoints/last.ckpt --top_k 3000 --out export/ --png map.png
    lightning neighbors --ckpt_path checkpoints/last.ckpt commission lundi --k 10
    lightning fill-mask --ckpt_path checkpoints/last.ckpt "la <mask> européenne a proposé" --k 5
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from minibert.checkpoint import check_checkpoint_file
from minibert.errors import MinibertError
from minibert.files import check_output_folder
from minibert.module import MiniBert
from minibert.options import OneLineParser
from minibert.projector import embedding_matrix, top_word_ids, write_projector_files
from minibert.tokenizer import MASK, Vocabulary, tokenize

COMMANDS = ("export", "neighbors", "fill-mask")


# --- the checkpoint -----------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> tuple[MiniBert, Vocabulary]:
    """The model of a checkpoint, in eval mode on the CPU, and its vocabulary."""
    checkpoint = check_checkpoint_file(path)
    missing = [key for key in ("hyper_parameters", "vocabulary") if key not in checkpoint]  # state_dict: checked already
    if missing:
        raise MinibertError(f"checkpoint {path} is not a minibert checkpoint: it has no {', '.join(missing)}")
    # LightningCLI adds bookkeeping entries such as "_instantiator"; they are not model arguments.
    hparams = {k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")}
    try:
        model = MiniBert(**hparams)
        model.load_state_dict(checkpoint["state_dict"])
        vocab = Vocabulary.from_dict(checkpoint["vocabulary"])
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        raise MinibertError(f"checkpoint {path} does not fit this version of minibert: {_first_line(error)}") from error
    if len(vocab) != model.hparams.vocab_size:
        raise MinibertError(f"checkpoint {path} holds {len(vocab)} words for a model of {model.hparams.vocab_size}")
    model.vocab = vocab
    return model.eval(), vocab


def _first_line(error: BaseException) -> str:
    """The error's type and first sentence: torch's messages go on for many lines."""
    text = str(error).strip().splitlines()[0].split(". ")[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- neighbours and masked words ----------------------------------------------------------


def nearest_words(matrix: Tensor, vocab: Vocabulary, word: str, k: int) -> list[tuple[str, float]]:
    """The ``k`` ordinary words closest to ``word`` by cosine similarity, with their scores."""
    query = vocab.require(word)
    unit = F.normalize(matrix.detach().float(), dim=-1)  # (V, D), rows of length 1
    scores = unit @ unit[query]  # (V,) cosine similarities
    scores[: vocab.num_specials] = -torch.inf  # special tokens are not words to show
    scores[query] = -torch.inf  # nor is the word itself
    top = scores.topk(min(k, len(vocab) - vocab.num_specials - 1))
    return [(vocab.itos[i], s) for s, i in zip(top.values.tolist(), top.indices.tolist())]


def fill_mask(model: MiniBert, vocab: Vocabulary, text: str, k: int) -> list[list[tuple[str, float]]]:
    """For each ``<mask>`` of ``text``, the ``k`` most likely words with their probabilities."""
    tokens = tokenize(text)  # "<" and ">" are not punctuation, so "<mask>" stays one token
    masked = [i for i, token in enumerate(tokens) if token == MASK]
    if not masked:
        raise MinibertError(f"the text {text!r} has no {MASK} to fill")
    if len(tokens) > model.hparams.seq_len:
        raise MinibertError(f"the text has {len(tokens)} tokens; this model reads at most {model.hparams.seq_len}")
    input_ids = torch.tensor([vocab.encode(tokens)])  # (1, T)
    with torch.no_grad():
        hidden = model.encoder(input_ids)  # (1, T, D)
        probs = model.encoder.logits(hidden[0, masked]).softmax(dim=-1)  # (M, V)
    top = probs.topk(min(k, len(vocab)))
    return [
        [(vocab.itos[i], p) for p, i in zip(values, indices)]
        for values, indices in zip(top.values.tolist(), top.indices.tolist())
    ]


def unknown_words(vocab: Vocabulary, text: str) -> list[str]:
    """The words of ``text`` that the model reads as ``<unk>``."""
    return [token for token in tokenize(text) if token not in vocab.stoi]


# --- the picture ---------------------------------------------------------------------------


def read_groups(path: str | Path) -> dict[str, list[str]]:
    """Word groups from a file of lines ``name<TAB>word word ...`` (``#`` lines are comments)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MinibertError(f"groups file {path} cannot be read: {_first_line(error)}") from error
    groups: dict[str, list[str]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        name, tab, words = line.partition("\t")
        if not tab or not name.strip() or not words.split():
            raise MinibertError(f"{path}, line {number}: expected 'name<TAB>word word ...', got {line!r}")
        groups.setdefault(name.strip(), []).extend(words.split())
    if not groups:
        raise MinibertError(f"groups file {path} has no group")
    return groups


def pca_2d(vectors: Tensor) -> Tensor:
    """The (N, D) vectors' coordinates on their two main axes of variance, (N, 2)."""
    centered = vectors.detach().float() - vectors.detach().float().mean(dim=0)  # (N, D)
    # pca_lowrank is randomised: a fixed seed draws the same map every time. Asking for a
    # few more axes than the two kept makes those two accurate.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, _, axes = torch.pca_lowrank(centered, q=min(6, *centered.shape), center=False)  # (D, q)
    return centered @ axes[:, :2]  # (N, 2)


def draw_map(png: str | Path, coords: Tensor, words: Sequence[str], groups: Sequence[str], title: str) -> None:
    """Save a scatter plot of ``coords`` (N, 2), each point labelled with its word, coloured by group."""
    figure_class = require_matplotlib()
    figure = figure_class(figsize=(10, 8), layout="constrained")
    axes = figure.add_subplot()  # a bare Figure, not pyplot: no window, no global state
    for group in dict.fromkeys(groups):  # each group once, in order of first appearance
        rows = [i for i, g in enumerate(groups) if g == group]
        points = axes.scatter(coords[rows, 0], coords[rows, 1], s=14, label=group)
        for i in rows:
            axes.annotate(words[i], coords[i].tolist(), fontsize=7, color=points.get_facecolor()[0], xytext=(2, 2), textcoords="offset points")
    axes.set(title=title, xlabel="first principal axis", ylabel="second principal axis")
    if len(set(groups)) > 1:
        axes.legend(fontsize=8, markerscale=1.5)
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png, dpi=100)


def require_matplotlib() -> type:
    """matplotlib's Figure class, or a clear message: it is an optional extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MinibertError('drawing a picture (--png) needs matplotlib: pip install -e ".[plot]"') from error
    return Figure


# --- the commands --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Look into a trained minibert checkpoint.")
    commands = parser.add_subparsers(dest="command", required=True)
    checkpoint = argparse.ArgumentParser(add_help=False)
    checkpoint.add_argument("--ckpt_path", required=True, type=Path, help="the checkpoint file (.ckpt)")
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--source", choices=("input", "output"), default="input",
        help="input word embeddings, or the output layer's rows (the same matrix when tied)",
    )

    export = commands.add_parser("export", parents=[checkpoint, source], help="projector TSVs and a 2-D map of the embeddings")
    export.add_argument("--top_k", type=at_least(0), default=3000, help="most frequent words to export; 0 = every word")
    export.add_argument("--out", type=Path, help="folder for vectors.tsv and metadata.tsv")
    export.add_argument("--png", type=Path, help="also draw a 2-D PCA map of chosen words into this PNG file")
    export.add_argument("--groups", type=Path, help="words to draw, by group: lines 'name<TAB>word word ...'")
    export.add_argument("--png_words", type=at_least(2), default=100, help="without --groups, draw this many most frequent words")

    neighbors = commands.add_parser("neighbors", parents=[checkpoint, source], help="nearest words by cosine similarity")
    neighbors.add_argument("words", nargs="+", metavar="WORD")
    neighbors.add_argument("--k", type=at_least(1), default=10, help="neighbours to show for each word")

    fill = commands.add_parser("fill-mask", parents=[checkpoint], help="the most likely words for each <mask> of a text")
    fill.add_argument("text", help='a sentence with one or more <mask>, e.g. "la <mask> européenne a proposé"')
    fill.add_argument("--k", type=at_least(1), default=5, help="words to show for each <mask>")
    return parser


def at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got {text!r}")
        return int(text)

    return parse


def main(argv: Sequence[str]) -> None:
    """Run ``export``, ``neighbors`` or ``fill-mask``; bad input raises :class:`MinibertError`."""
    args = build_parser().parse_args(argv)
    {"export": run_export, "neighbors": run_neighbors, "fill-mask": run_fill_mask}[args.command](args)


def run_export(args: argparse.Namespace) -> None:
    if args.out is None and args.png is None:
        raise MinibertError("export needs --out DIR (projector files), --png FILE (a picture), or both")
    groups = read_groups(args.groups) if args.groups else None
    if args.png:
        require_matplotlib()  # before any work, so a missing extra costs nothing
    check_export_paths(args.out, args.png)
    model, vocab = load_checkpoint(args.ckpt_path)
    matrix = embedding_matrix(model.encoder, args.source)
    if args.out:
        ids = top_word_ids(vocab, args.top_k)
        try:
            write_projector_files(args.out, matrix[ids], vocab.decode(ids), [vocab.counts[i] for i in ids])
        except OSError as error:  # a full disk, say: each file is written whole or not at all
            raise MinibertError(f"export --out {args.out}: cannot write ({error.strerror}); files already there are unchanged") from None
        print(f"wrote {args.out / 'vectors.tsv'} and {args.out / 'metadata.tsv'}: {len(ids)} words x {matrix.shape[1]}")
    if args.png:
        words, labels = picture_words(vocab, groups, args.png_words, args.groups)
        coords = pca_2d(matrix[vocab.encode(words)])  # (N, 2)
        draw_map(args.png, coords, words, labels, f"{args.ckpt_path.name}: {args.source} embeddings, PCA")
        print(f"wrote {args.png}: {len(words)} words")


def check_export_paths(out: Path | None, png: Path | None) -> None:
    """``--out`` and ``--png`` can be written, checked before the checkpoint is read."""
    if out is not None:
        check_output_folder(out, "export --out")
    if png is not None:
        if png.is_dir():
            raise MinibertError(f"export --png {png} is a folder; give a file name such as {png / 'map.png'}")
        check_output_folder(png.parent, "export --png")


def picture_words(vocab: Vocabulary, groups: dict[str, list[str]] | None, top: int, groups_path: Path | None) -> tuple[list[str], list[str]]:
    """The words to draw and their group names: the groups' words that the model knows, or the ``top`` most frequent."""
    if groups is None:
        words = vocab.decode(top_word_ids(vocab, top))
        return words, ["most frequent words"] * len(words)
    chosen = [(word, name) for name, words in groups.items() for word in words]
    left_out = [word for word, _ in chosen if word not in vocab.stoi]
    if left_out:
        print(f"not in the vocabulary, left out of the picture: {' '.join(left_out)}")
    kept = [(word, name) for word, name in chosen if word in vocab.stoi]
    if len(kept) < 2:
        raise MinibertError(f"groups file {groups_path}: fewer than 2 of its words are in the vocabulary")
    return [word for word, _ in kept], [name for _, name in kept]


def run_neighbors(args: argparse.Namespace) -> None:
    model, vocab = load_checkpoint(args.ckpt_path)
    for word in args.words:
        vocab.require(word)  # every word checked before anything is printed
    matrix = embedding_matrix(model.encoder, args.source)
    for word in args.words:
        print(f"{word}:")
        for neighbour, score in nearest_words(matrix, vocab, word, args.k):
            print(f"  {score:7.4f}  {neighbour}")


def run_fill_mask(args: argparse.Namespace) -> None:
    model, vocab = load_checkpoint(args.ckpt_path)
    predictions = fill_mask(model, vocab, args.text, args.k)
    unknown = unknown_words(vocab, args.text)
    if unknown:
        print(f"not in the vocabulary, read as <unk>: {' '.join(unknown)}")
    print(" ".join(tokenize(args.text)))
    for number, candidates in enumerate(predictions, start=1):
        print(f"<mask> {number}:")
        for word, prob in candidates:
            print(f"  {prob:7.4f}  {word}")
