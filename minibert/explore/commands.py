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

``--ckpt_path last`` reads the newest ``checkpoints/last*.ckpt``, as ``fit --ckpt_path last`` does.

Every input is checked before anything is written: bad input stops the command with one
line (:class:`MinibertError`) and leaves files already there as they were.

Each ``run_*`` function below takes the parsed options (:mod:`minibert.explore.arguments`),
checks them, and prints what the modules beside it compute.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from minibert.errors import MinibertError
from minibert.explore.arguments import build_parser
from minibert.explore.attention import UNKNOWN_MARK, attention_maps, draw_attention
from minibert.explore.attention_page import write_attention_page
from minibert.explore.checkpoint import load_checkpoint, resolve_checkpoint
from minibert.explore.contexts import context_vectors, find_occurrences, parse_marked, write_context_files
from minibert.explore.embeddings import embedding_matrix, top_word_ids
from minibert.explore.evaluation import (
    analogy_lines,
    analogy_scores,
    group_of,
    purity_at_k,
    purity_line,
    read_analogies,
    read_groups,
)
from minibert.explore.figures import require_matplotlib, save_figure
from minibert.explore.fill_mask import fill_mask
from minibert.explore.internals import check_layer, unknown_tokens
from minibert.explore.neighbours import nearest, nearest_words
from minibert.explore.projector import write_projector_files
from minibert.explore.word2vec import write_word2vec
from minibert.explore.word_map import PNG_NEEDS, draw_map, pca_2d, picture_words
from minibert.machinery.files import check_output_folder
from minibert.module import MiniBert
from minibert.tokenizer import normalize, tokenize

COMMANDS = ("export", "neighbors", "fill-mask", "attention", "contexts", "evaluate")


def main(argv: Sequence[str]) -> None:
    """Run one of :data:`COMMANDS`; bad input raises :class:`MinibertError`."""
    args = build_parser().parse_args(argv)
    args.ckpt_path = resolve_checkpoint(args.ckpt_path)  # 'last' works here as for fit
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
                    args.out, matrix[ids], vocab.decode(ids), count=[vocab.counts[i] for i in ids]
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


def run_neighbors_in_context(args: argparse.Namespace) -> None:
    """The corpus occurrences of the bracketed word whose vectors in context are closest to its own."""
    if args.words or args.corpus is None:
        raise MinibertError("neighbors --in-context TEXT needs --corpus FILE and no other word")
    model, vocab = load_checkpoint(args.ckpt_path)
    seq_len, layer = model.config.seq_len, chosen_layer(model, args.layer)
    word, query = parse_marked(args.in_context, seq_len)
    vocab.require(word)
    occurrences = find_occurrences(args.corpus, [word], seq_len, args.max_per_word)
    vectors = context_vectors(model.encoder, vocab, [query, *occurrences], layer)  # (1 + N, D)
    print(
        f"{query.marked()}: the {min(args.k, len(occurrences))} closest of {len(occurrences)} occurrences in {args.corpus}, layer {layer}"
    )
    scores, rows = nearest(vectors[:1], vectors[1:], args.k)  # (1, k) each
    for score, row in zip(scores[0].tolist(), rows[0].tolist()):
        print(f"  {score:7.4f}  {occurrences[row].marked()}  (sentence {occurrences[row].sentence_no})")


def chosen_layer(model: MiniBert, layer: int | None) -> int:
    """``--layer``, checked against the model; the last layer when not given."""
    return check_layer(model.config.num_layers if layer is None else layer, model.config.num_layers)


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


def run_attention(args: argparse.Namespace) -> None:
    if args.out is None and args.html is None:
        raise MinibertError("attention needs --out FILE.png (a picture), --html FILE (a page), or both")
    if args.out:
        require_matplotlib("drawing attention maps (--out)")
    model, vocab = load_checkpoint(args.ckpt_path)
    labels, weights = attention_maps(model.encoder, vocab, args.text, model.config.seq_len)  # (L, H, T, T)
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
    words = [normalize(word.strip()) for word in args.words.split(",") if word.strip()]
    if not words:
        raise MinibertError("--words needs at least one word: --words session,commission,vote")
    if args.out.exists() and not args.out.is_dir():
        raise MinibertError(f"--out {args.out} is a file; give a folder")
    model, vocab = load_checkpoint(args.ckpt_path)
    for word in words:
        vocab.require(word)
    layer = chosen_layer(model, args.layer)
    occurrences = find_occurrences(args.corpus, words, model.config.seq_len, args.max_per_word)
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
    lines, unscored = [f"{args.ckpt_path}, {args.source} embeddings:"], []
    if groups is not None:
        purity, found = purity_at_k(matrix, vocab.itos, groups, args.k, vocab.num_specials)
        if found:
            lines.append(purity_line(purity, found, groups, len(vocab), args.k))
        else:  # a purity of no word is no number (NaN): say why there is none
            unscored.append(f"none of the {len(groups)} words of {args.groups} is in the vocabulary")
    if sections is not None:
        scores = analogy_scores(matrix, vocab.itos, sections, vocab.num_specials)
        if scores[-1].covered:
            lines.append(f"analogies of {args.analogies} (3CosAdd, the question's words excluded):")
            lines += analogy_lines(scores)
        else:
            unscored.append(
                f"none of the {scores[-1].total} questions of {args.analogies} has its four words in the vocabulary"
            )
    words = f"{len(vocab):,} words, lower-case"
    if len(unscored) == (groups is not None) + (sections is not None):  # nothing at all to show
        raise MinibertError(
            f"{'; '.join(unscored)} ({words}): nothing to score",
            hint="check the file's words, or evaluate a checkpoint trained on more text (configs/quick.yaml)",
        )
    print("\n".join(lines + [f"no score: {reason} ({words})" for reason in unscored]))
