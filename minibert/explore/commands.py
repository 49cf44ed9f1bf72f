"""Looking into a trained checkpoint: the command line of ``export``, ``neighbors``, ``fill-mask``,
``attention``, ``contexts`` and ``evaluate``.

These commands read nothing but the checkpoint file (weights, hyper-parameters and the
vocabulary saved beside them), and the text or files they are given, so they work on any
``.ckpt`` without the training corpus (docs/inspect.md shows each with its output)::

    lightning export --ckpt_path checkpoints/last.ckpt --top_k 3000 --out export/ --png map.png
    lightning export --ckpt_path checkpoints/last.ckpt --format word2vec --out vectors.txt
    lightning neighbors --ckpt_path checkpoints/last.ckpt commission lundi --k 10
    lightning neighbors --ckpt_path checkpoints/last.ckpt --in-context "le [vote] de la commission" --corpus FILE
    lightning fill-mask --ckpt_path checkpoints/last.ckpt "la <mask> européenne a proposé" --k 5
    lightning attention --ckpt_path checkpoints/last.ckpt "la commission a voté ." --out attention.png --html attention.html
    lightning contexts --ckpt_path checkpoints/last.ckpt --corpus FILE --words session,vote --out contexts/
    lightning evaluate --ckpt_path checkpoints/last.ckpt --groups GROUPS.tsv --analogies QUESTIONS.txt

Every input is checked before anything is written: bad input stops the command with one
line (:class:`MinibertError`) and leaves files already there as they were.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from minibert.errors import MinibertError
from minibert.explore.attention import (
    UNKNOWN_MARK,
    attention_maps,
    draw_attention,
    require_matplotlib,
    save_figure,
)
from minibert.explore.attention_page import write_attention_page
from minibert.explore.contexts import (
    context_vectors,
    find_occurrences,
    nearest,
    parse_marked,
    write_context_files,
)
from minibert.explore.evaluation import (
    analogy_lines,
    analogy_scores,
    group_of,
    purity_at_k,
    purity_line,
    read_analogies,
    read_groups,
)
from minibert.explore.internals import check_layer, encode_words, unknown_tokens
from minibert.explore.projector import embedding_matrix, top_word_ids, write_projector_files
from minibert.explore.word2vec import write_word2vec
from minibert.machinery.checkpoint import check_checkpoint_file, model_arguments
from minibert.machinery.files import check_output_folder
from minibert.machinery.options import OneLineParser
from minibert.module import MiniBert
from minibert.tokenizer import MASK, Vocabulary, tokenize

COMMANDS = ("export", "neighbors", "fill-mask", "attention", "contexts", "evaluate")
PNG_NEEDS = "drawing a picture (--png)"


# --- the checkpoint -----------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> tuple[MiniBert, Vocabulary]:
    """The model of a checkpoint, in eval mode on the CPU, and its vocabulary."""
    checkpoint = check_checkpoint_file(path)
    missing = [
        key for key in ("hyper_parameters", "vocabulary") if key not in checkpoint
    ]  # state_dict: checked already
    if missing:
        raise MinibertError(f"checkpoint {path} is not a minibert checkpoint: it has no {', '.join(missing)}")
    try:
        model = MiniBert(**model_arguments(checkpoint))
        model.load_state_dict(checkpoint["state_dict"])
        vocab = Vocabulary.from_dict(checkpoint["vocabulary"])
    except (TypeError, ValueError, KeyError, RuntimeError) as error:
        raise MinibertError(
            f"checkpoint {path} does not fit this version of minibert: {_first_line(error)}"
        ) from error
    if len(vocab) != model.hparams.vocab_size:
        raise MinibertError(
            f"checkpoint {path} holds {len(vocab)} words for a model of {model.hparams.vocab_size}"
        )
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
    if MASK not in tokenize(text):  # "<" and ">" are not punctuation, so "<mask>" stays one token
        raise MinibertError(f"the text {text!r} has no {MASK} to fill")
    tokens, input_ids = encode_words(vocab, text, model.hparams.seq_len)  # (1, T)
    masked = [i for i, token in enumerate(tokens) if token == MASK]
    with torch.no_grad():
        hidden = model.encoder(input_ids)  # (1, T, D)
        probs = model.encoder.logits(hidden[0, masked]).softmax(dim=-1)  # (M, V)
    top = probs.topk(min(k, len(vocab)))
    return [
        [(vocab.itos[i], p) for p, i in zip(values, indices)]
        for values, indices in zip(top.values.tolist(), top.indices.tolist())
    ]


# --- the picture ---------------------------------------------------------------------------


def pca_2d(vectors: Tensor) -> Tensor:
    """The (N, D) vectors' coordinates on their two main axes of variance, (N, 2)."""
    centered = vectors.detach().float() - vectors.detach().float().mean(dim=0)  # (N, D)
    # pca_lowrank is randomised: a fixed seed draws the same map every time. Asking for a
    # few more axes than the two kept makes those two accurate.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        _, _, axes = torch.pca_lowrank(centered, q=min(6, *centered.shape), center=False)  # (D, q)
    return centered @ axes[:, :2]  # (N, 2)


def draw_map(
    png: str | Path, coords: Tensor, words: Sequence[str], groups: Sequence[str], title: str
) -> None:
    """Save a scatter plot of ``coords`` (N, 2), each point labelled with its word, coloured by group."""
    figure_class = require_matplotlib(PNG_NEEDS)
    figure = figure_class(figsize=(10, 8), layout="constrained")
    axes = figure.add_subplot()  # a bare Figure, not pyplot: no window, no global state
    for group in dict.fromkeys(groups):  # each group once, in order of first appearance
        rows = [i for i, g in enumerate(groups) if g == group]
        points = axes.scatter(coords[rows, 0], coords[rows, 1], s=14, label=group)
        for i in rows:
            axes.annotate(
                words[i],
                coords[i].tolist(),
                fontsize=7,
                color=points.get_facecolor()[0],
                xytext=(2, 2),
                textcoords="offset points",
            )
    axes.set(title=title, xlabel="first principal axis", ylabel="second principal axis")
    if len(set(groups)) > 1:
        axes.legend(fontsize=8, markerscale=1.5)
    save_figure(figure, png)


# --- the commands --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description="Look into a trained minibert checkpoint.")
    commands = parser.add_subparsers(dest="command", required=True)
    checkpoint = argparse.ArgumentParser(add_help=False)
    checkpoint.add_argument("--ckpt_path", required=True, type=Path, help="the checkpoint file (.ckpt)")
    source = argparse.ArgumentParser(add_help=False)
    source.add_argument(
        "--source",
        choices=("input", "output"),
        default="input",
        help="input word embeddings, or the output layer's rows (the same matrix when tied)",
    )

    export = commands.add_parser(
        "export", parents=[checkpoint, source], help="projector TSVs and a 2-D map of the embeddings"
    )
    export.add_argument(
        "--top_k", type=at_least(0), default=3000, help="most frequent words to export; 0 = every word"
    )
    export.add_argument(
        "--out",
        type=Path,
        help="folder for vectors.tsv and metadata.tsv; with --format word2vec, the file to write",
    )
    export.add_argument(
        "--format",
        choices=("projector", "word2vec"),
        default="projector",
        help="projector TSVs, or word2vec's text format (gensim's KeyedVectors.load_word2vec_format)",
    )
    export.add_argument("--png", type=Path, help="also draw a 2-D PCA map of chosen words into this PNG file")
    export.add_argument("--groups", type=Path, help="words to draw, by group: lines 'name<TAB>word word ...'")
    export.add_argument(
        "--png_words",
        type=at_least(2),
        default=100,
        help="without --groups, draw this many most frequent words",
    )

    layer = argparse.ArgumentParser(add_help=False)
    layer.add_argument(
        "--layer",
        type=at_least(0),
        help="the vectors at this layer's output (0: the input embeddings); default: the last layer",
    )
    layer.add_argument(
        "--max_per_word",
        type=at_least(1),
        default=100,
        help="occurrences of each word read from the corpus, the first ones",
    )

    neighbors = commands.add_parser(
        "neighbors",
        parents=[checkpoint, source, layer],
        help="nearest words by cosine similarity, or nearest occurrences in context",
    )
    neighbors.add_argument("words", nargs="*", metavar="WORD")
    neighbors.add_argument("--k", type=at_least(1), default=10, help="neighbours to show for each word")
    neighbors.add_argument(
        "--in-context",
        dest="in_context",
        metavar="TEXT",
        help='a sentence with one word in brackets, "le [vote] de la commission": its occurrences in --corpus closest in context',
    )
    neighbors.add_argument(
        "--corpus", type=Path, help="with --in-context: the sentences to search, one a line"
    )

    fill = commands.add_parser(
        "fill-mask", parents=[checkpoint], help="the most likely words for each <mask> of a text"
    )
    fill.add_argument(
        "text", help='a sentence with one or more <mask>, e.g. "la <mask> européenne a proposé"'
    )
    fill.add_argument("--k", type=at_least(1), default=5, help="words to show for each <mask>")

    attention = commands.add_parser(
        "attention", parents=[checkpoint], help="attention weights of every layer and head for one sentence"
    )
    attention.add_argument("text", help='a sentence, e.g. "la commission a voté le rapport ."')
    attention.add_argument(
        "--out", type=Path, help="the picture to write (PNG): layers as rows, heads as columns"
    )
    attention.add_argument(
        "--html", type=Path, help="also write a page where pointing at a token shows where it looks"
    )

    contexts = commands.add_parser(
        "contexts",
        parents=[checkpoint, layer],
        help="a vector for every occurrence of words in a corpus, as projector files",
    )
    contexts.add_argument(
        "--corpus",
        type=Path,
        required=True,
        help="the sentences to read, one a line (or raw Europarl sessions)",
    )
    contexts.add_argument("--words", required=True, help="comma-separated words: session,commission,vote")
    contexts.add_argument(
        "--out",
        type=Path,
        required=True,
        help="folder for vectors.tsv, metadata.tsv and projector_config.pbtxt",
    )

    evaluate = commands.add_parser(
        "evaluate", parents=[checkpoint, source], help="purity@k on word groups, accuracy on word analogies"
    )
    evaluate.add_argument("--groups", type=Path, help="word groups: lines 'name<TAB>word word ...'")
    evaluate.add_argument(
        "--analogies",
        type=Path,
        help="questions in word2vec's format: ': section' lines, then 'a b c d' lines",
    )
    evaluate.add_argument("--k", type=at_least(1), default=5, help="neighbours per word for purity@k")
    return parser


def at_least(minimum: int):
    """An argparse type: an integer no smaller than ``minimum``."""

    def parse(text: str) -> int:
        if not text.lstrip("-").isdigit() or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number of at least {minimum}, got {text!r}")
        return int(text)

    return parse


def main(argv: Sequence[str]) -> None:
    """Run one of :data:`COMMANDS`; bad input raises :class:`MinibertError`."""
    args = build_parser().parse_args(argv)
    runners = {
        "export": run_export, "neighbors": run_neighbors, "fill-mask": run_fill_mask,
        "attention": run_attention, "contexts": run_contexts, "evaluate": run_evaluate,
    }  # fmt: skip
    runners[args.command](args)


def run_export(args: argparse.Namespace) -> None:
    if args.out is None and args.png is None:
        raise MinibertError("export needs --out DIR (projector files), --png FILE (a picture), or both")
    word2vec = args.format == "word2vec"
    if word2vec and (args.out is None or args.out.is_dir()):
        raise MinibertError("export --format word2vec needs --out FILE, the file to write (not a folder)")
    groups = read_groups(args.groups) if args.groups else None
    if args.png:
        require_matplotlib(PNG_NEEDS)  # before any work, so a missing extra costs nothing
    check_export_paths(args.out, args.png, out_is_file=word2vec)
    model, vocab = load_checkpoint(args.ckpt_path)
    matrix = embedding_matrix(model.encoder, args.source)
    if args.out:
        ids = top_word_ids(vocab, args.top_k)
        try:
            if word2vec:
                write_word2vec(args.out, matrix[ids], vocab.decode(ids))
            else:
                write_projector_files(
                    args.out, matrix[ids], vocab.decode(ids), [vocab.counts[i] for i in ids]
                )
        except OSError as error:  # a full disk, say: each file is written whole or not at all
            raise MinibertError(
                f"export --out {args.out}: cannot write ({error.strerror}); files already there are unchanged"
            ) from None
        shape = f"{len(ids)} words x {matrix.shape[1]}"
        print(
            f"wrote {args.out}: {shape}, word2vec's text format"
            if word2vec
            else f"wrote {args.out / 'vectors.tsv'} and {args.out / 'metadata.tsv'}: {shape}"
        )
    if args.png:
        words, labels = picture_words(vocab, groups, args.png_words, args.groups)
        coords = pca_2d(matrix[vocab.encode(words)])  # (N, 2)
        draw_map(args.png, coords, words, labels, f"{args.ckpt_path.name}: {args.source} embeddings, PCA")
        print(f"wrote {args.png}: {len(words)} words")


def check_export_paths(out: Path | None, png: Path | None, out_is_file: bool = False) -> None:
    """``--out`` and ``--png`` can be written, checked before the checkpoint is read."""
    if out is not None:
        check_output_folder(out.parent if out_is_file else out, "export --out")
    if png is not None:
        if png.is_dir():
            raise MinibertError(f"export --png {png} is a folder; give a file name such as {png / 'map.png'}")
        check_output_folder(png.parent, "export --png")


def picture_words(
    vocab: Vocabulary, groups: dict[str, list[str]] | None, top: int, groups_path: Path | None
) -> tuple[list[str], list[str]]:
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
    if args.in_context is not None:
        return run_neighbors_in_context(args)
    if not args.words:
        raise MinibertError("neighbors needs words, or --in-context TEXT with --corpus FILE")
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
    unknown = unknown_tokens(vocab, tokenize(args.text))
    if unknown:
        print(f"not in the vocabulary, read as <unk>: {' '.join(unknown)}")
    print(" ".join(tokenize(args.text)))
    for number, candidates in enumerate(predictions, start=1):
        print(f"<mask> {number}:")
        for word, prob in candidates:
            print(f"  {prob:7.4f}  {word}")


def run_neighbors_in_context(args: argparse.Namespace) -> None:
    """The corpus occurrences of the bracketed word whose vectors in context are closest to its own."""
    if args.words or args.corpus is None:
        raise MinibertError("neighbors --in-context TEXT needs --corpus FILE and no other word")
    model, vocab = load_checkpoint(args.ckpt_path)
    seq_len, layer = model.hparams.seq_len, chosen_layer(model, args.layer)
    word, query = parse_marked(args.in_context, seq_len)
    vocab.require(word)
    occurrences = find_occurrences(args.corpus, [word], seq_len, args.max_per_word)
    vectors = context_vectors(model.encoder, vocab, [query, *occurrences], layer)  # (1 + N, D)
    print(
        f"{query.marked()}: the {min(args.k, len(occurrences))} closest of {len(occurrences)} occurrences in {args.corpus}, layer {layer}"
    )
    for row, score in nearest(vectors[0], vectors[1:], args.k):
        print(f"  {score:7.4f}  {occurrences[row].marked()}  (sentence {occurrences[row].sentence_no})")


def chosen_layer(model: MiniBert, layer: int | None) -> int:
    """``--layer``, checked against the model; the last layer when not given."""
    return check_layer(model.hparams.num_layers if layer is None else layer, model.hparams.num_layers)


def run_attention(args: argparse.Namespace) -> None:
    if args.out is None and args.html is None:
        raise MinibertError("attention needs --out FILE.png (a picture), --html FILE (a page), or both")
    if args.out:
        require_matplotlib("drawing attention maps (--out)")
    model, vocab = load_checkpoint(args.ckpt_path)
    labels, weights = attention_maps(model.encoder, vocab, args.text, model.hparams.seq_len)  # (L, H, T, T)
    unknown = [label for label in labels if label.endswith(UNKNOWN_MARK)]
    if unknown:
        print(f"not in the vocabulary, read as <unk> (marked {UNKNOWN_MARK}): {' '.join(unknown)}")
    title = f"{args.ckpt_path.name}: {' '.join(labels)}" + (
        f"   ({UNKNOWN_MARK}: read as <unk>)" if unknown else ""
    )
    if args.out:
        save_figure(draw_attention(weights, labels, title), args.out)
        print(f"wrote {args.out}: {weights.shape[0]} layers x {weights.shape[1]} heads, {len(labels)} tokens")
    if args.html:
        write_attention_page(args.html, weights, labels, title)
        print(f"wrote {args.html}")


def run_contexts(args: argparse.Namespace) -> None:
    words = [word.strip().lower() for word in args.words.split(",") if word.strip()]
    if not words:
        raise MinibertError("--words needs at least one word: --words session,commission,vote")
    if args.out.exists() and not args.out.is_dir():
        raise MinibertError(f"--out {args.out} is a file; give a folder")
    model, vocab = load_checkpoint(args.ckpt_path)
    for word in words:
        vocab.require(word)
    layer = chosen_layer(model, args.layer)
    occurrences = find_occurrences(args.corpus, words, model.hparams.seq_len, args.max_per_word)
    vectors = context_vectors(model.encoder, vocab, occurrences, layer)  # (N, D)
    write_context_files(args.out, vectors, occurrences, f"contexts/layer_{layer}")
    counts = ", ".join(f"{word} {sum(o.word == word for o in occurrences)}" for word in words)
    print(
        f"wrote {args.out / 'vectors.tsv'} and {args.out / 'metadata.tsv'}: {len(occurrences)} occurrences x {vectors.shape[1]} at layer {layer} ({counts})"
    )


def run_evaluate(args: argparse.Namespace) -> None:
    if args.groups is None and args.analogies is None:
        raise MinibertError("evaluate needs --groups FILE, --analogies FILE, or both")
    groups = group_of(read_groups(args.groups)) if args.groups else None
    sections = read_analogies(args.analogies) if args.analogies else None
    model, vocab = load_checkpoint(args.ckpt_path)
    matrix = embedding_matrix(model.encoder, args.source)  # (V, D)
    print(f"{args.ckpt_path}, {args.source} embeddings:")
    if groups is not None:
        purity, found = purity_at_k(matrix, vocab.itos, groups, args.k, vocab.num_specials)
        print(purity_line(purity, found, groups, len(vocab), args.k))
    if sections is not None:
        print(f"analogies of {args.analogies} (3CosAdd, the question's words excluded):")
        print("\n".join(analogy_lines(analogy_scores(matrix, vocab.itos, sections, vocab.num_specials))))
