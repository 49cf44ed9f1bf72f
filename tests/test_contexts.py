"""Words in context: one vector per occurrence, at one layer's output, beside the sentence it comes from."""

from __future__ import annotations

import shutil

import pytest
import torch
from conftest import SAMPLE_CORPUS, run_cli
from test_projector import read_metadata, read_vectors
from test_tensorboard import embeddings, tensor, tensorboard  # noqa: F401 (a fixture)

from minibert.cli import main
from minibert.corpus import read_sentences
from minibert.errors import MinibertError
from minibert.explore.checkpoint import load_checkpoint
from minibert.explore.contexts import (
    Occurrence,
    context_vectors,
    find_occurrences,
    occurrence_at,
    parse_marked,
    window,
)
from minibert.explore.internals import record_internals
from minibert.tokenizer import tokenize


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def loaded(checkpoint):
    return load_checkpoint(checkpoint)


def test_window_is_centred_on_the_word_and_stays_inside_the_sentence():
    # the examples of the docstring and docs/inspect.md: 30 tokens read by a model of seq_len 20
    assert [window(30, p, 20) for p in (3, 15, 28)] == [(0, 20), (5, 25), (10, 30)]
    assert window(5, 4, 20) == (0, 5)  # a short sentence is read whole
    assert [window(10, p, 5) for p in range(10)] == [(0, 5)] * 3 + [(1, 6), (2, 7), (3, 8), (4, 9)] + [
        (5, 10)
    ] * 3
    for length in range(1, 15):
        for position in range(length):
            start, end = window(length, position, 4)
            assert start <= position < end and end - start == min(length, 4)


def test_an_occurrence_in_a_long_sentence_shows_where_it_was_cut():
    tokens = tokenize("a b c d e f g h i j")
    occurrence = occurrence_at("f", tokens, 5, 4, sentence_no=7)
    assert occurrence == Occurrence("f", ("d", "e", "f", "g"), 2, 7, 6, True, True)
    assert occurrence.marked() == "… d e [f] g …"
    assert occurrence_at("a", tokens, 0, 4).marked() == "[a] b c d …"


def test_occurrences_are_found_in_corpus_order_up_to_the_maximum(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("le vote a eu lieu .\n\nle vote et le vote .\nla commission vote .\n", encoding="utf-8")
    found = find_occurrences(corpus, ["vote", "commission"], seq_len=20, max_per_word=3)
    assert [(o.word, o.sentence_no, o.position) for o in found] == [
        ("vote", 1, 2),
        ("vote", 2, 2),
        ("vote", 2, 5),
        ("commission", 3, 2),
    ]
    with pytest.raises(MinibertError, match=f"not found in the corpus {corpus}: session"):
        find_occurrences(corpus, ["vote", "session"], 20, 3)


def test_identical_contexts_give_identical_vectors_and_different_ones_differ(loaded):
    model, vocab = loaded
    occurrences = [occurrence_at("commission", tokenize(text), 1, 12) for text in (
        "la commission votera trois propositions .",
        "la commission votera trois propositions .",  # the same sentence again
        "la commission examinera les questions .",  # the same word in another sentence
        "la commission votera trois propositions le vendredi 2 octobre .",  # the same start, a longer sentence
    )]  # fmt: skip
    for layer in (1, 2):
        vectors = context_vectors(model.encoder, vocab, occurrences, layer)  # (4, D)
        assert torch.equal(vectors[0], vectors[1])
        assert not torch.allclose(vectors[0], vectors[2], atol=1e-4) and not torch.allclose(
            vectors[0], vectors[3], atol=1e-4
        )
    embeddings_only = context_vectors(
        model.encoder, vocab, occurrences, 0
    )  # before any attention: the word and its place
    assert torch.equal(embeddings_only[0], embeddings_only[2])


def test_a_vector_is_the_hidden_state_of_its_window_alone(loaded):
    model, vocab = loaded
    sentences = [tokenize(s) for s in SAMPLE_CORPUS.read_text(encoding="utf-8").splitlines()[:40]]
    occurrences = [
        occurrence_at(tokens[p], tokens, p, 12) for tokens in sentences for p in (0, len(tokens) - 1)
    ]
    vectors = context_vectors(model.encoder, vocab, occurrences, 2, batch_size=7)  # batches cut anywhere
    for occurrence, vector in zip(occurrences, vectors):
        alone = record_internals(model.encoder, torch.tensor([vocab.encode(occurrence.tokens)])).hidden[2][
            0, occurrence.index
        ]
        torch.testing.assert_close(vector, alone, atol=1e-5, rtol=0)


def test_a_sentence_longer_than_seq_len_is_read_around_the_word(loaded, tmp_path):
    """The documented cut: the 12 tokens around the word, pushed inside the sentence."""
    model, vocab = loaded
    words = "le parlement a voté et la commission a examiné les questions du conseil sur la france et le vendredi 2 octobre ."
    corpus = tmp_path / "long.txt"
    corpus.write_text(words + "\n", encoding="utf-8")
    (first, last) = find_occurrences(corpus, ["la"], 12, 10)
    assert (first.position, first.tokens, first.index) == (6, tuple(words.split()[0:12]), 5)
    assert (last.position, last.tokens, last.index) == (15, tuple(words.split()[8:20]), 6)
    vectors = context_vectors(model.encoder, vocab, [first, last], 2)
    by_hand = context_vectors(
        model.encoder, vocab, [parse_marked(o.marked(), 12)[1] for o in (first, last)], 2
    )
    assert torch.equal(vectors, by_hand)


def test_parse_marked_finds_the_bracketed_word():
    word, occurrence = parse_marked("Le [vote] de la commission", 12)
    assert (
        word == "vote"
        and occurrence.tokens == ("le", "vote", "de", "la", "commission")
        and occurrence.index == 1
    )
    for text in ("le vote", "le [vote] et le [vote]", "[le vote]"):
        with pytest.raises(MinibertError, match="mark exactly one word"):
            parse_marked(text, 12)
    with pytest.raises(MinibertError, match="the text has 15 tokens; this model reads at most 12"):
        parse_marked("le [vote]" + " de la" * 6 + " commission", 12)


# --- the commands ------------------------------------------------------------------------------


def test_contexts_metadata_rows_line_up_with_the_vectors(checkpoint, loaded, tmp_path):
    out = tmp_path / "contexts"
    result = run_cli(
        "contexts", "--ckpt_path", str(checkpoint), "--corpus", str(SAMPLE_CORPUS), "--words", "commission,France",
        "--layer", "1", "--max_per_word", "5", "--out", str(out), cwd=tmp_path,
    )  # fmt: skip
    assert (
        result.stdout
        == f"wrote {out / 'vectors.tsv'} and {out / 'metadata.tsv'}: 10 occurrences x 16 at layer 1 (commission 5, france 5)\n"
    )
    header, rows = read_metadata(out / "metadata.tsv")
    vectors = read_vectors(out / "vectors.tsv")
    assert header == ["word", "sentence", "sentence_no", "position"] and len(rows) == len(vectors) == 10
    model, vocab = loaded
    sentences = list(read_sentences(SAMPLE_CORPUS))  # numbered from 1, blank lines not counted
    for (word, marked, sentence_no, position), vector in zip(rows, vectors):
        tokens = tokenize(sentences[int(sentence_no) - 1])
        assert tokens[int(position) - 1] == word and f"[{word}]" in marked
        again = context_vectors(model.encoder, vocab, [parse_marked(marked, 12)[1]], 1)[0]
        torch.testing.assert_close(
            vector, again, atol=1e-6, rtol=0
        )  # the row's sentence gives the row's vector


def test_tensorboard_lists_contexts_written_inside_a_log_folder(tiny_run, tmp_path, tensorboard):  # noqa: F811
    logs = tmp_path / "lightning_logs"
    shutil.copytree(tiny_run / "lightning_logs", logs)
    out = logs / "version_0" / "contexts"
    main(["contexts", "--ckpt_path", str(tiny_run / "checkpoints" / "last.ckpt"), "--corpus", str(SAMPLE_CORPUS),
          "--words", "parlement", "--max_per_word", "4", "--out", str(out)])  # fmt: skip
    server = tensorboard(logs)
    server.wait_for_runs(["version_0", "version_0/contexts"])
    (entry,) = embeddings(server, "version_0/contexts")
    assert entry["tensorName"] == "contexts/layer_2" and entry["tensorShape"] == [4, 16]
    assert torch.equal(
        tensor(server, "version_0/contexts", "contexts/layer_2", [4, 16]), read_vectors(out / "vectors.tsv")
    )
    metadata = server.get("metadata", run="version_0/contexts", name="contexts/layer_2").decode().split("\n")
    assert metadata[0] == "word\tsentence\tsentence_no\tposition" and metadata[1].startswith("parlement\t")
    assert [e["tensorName"] for e in embeddings(server, "version_0")] == [  # the run's own, untouched
        "word_embeddings/9998 epoch 1",
        "word_embeddings/9999 epoch 0",
    ]


def test_neighbors_in_context_lists_the_closest_occurrences(checkpoint, loaded, capsys):
    text = "la [commission] votera trois propositions le vendredi 2 octobre ."
    main(
        [
            "neighbors",
            "--ckpt_path",
            str(checkpoint),
            "--in-context",
            text,
            "--corpus",
            str(SAMPLE_CORPUS),
            "--k",
            "3",
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{text}: the 3 closest of 44 occurrences in {SAMPLE_CORPUS}, layer 2"
    model, vocab = loaded
    occurrences = find_occurrences(SAMPLE_CORPUS, ["commission"], 12, 100)
    vectors = context_vectors(model.encoder, vocab, occurrences, 2)  # (44, D)
    query = context_vectors(model.encoder, vocab, [parse_marked(text, 12)[1]], 2)[0]
    cosines = torch.nn.functional.cosine_similarity(vectors, query[None], dim=-1)  # (44,)
    best = cosines.topk(3)
    # The fixture's template sentences give near-ties (cosines that differ in the 7th digit), whose
    # order depends on rounding: check each printed line's score and rank, not the order of ties.
    printed = {
        f"  {occurrences[i].marked()}  (sentence {occurrences[i].sentence_no})": cosines[i].item()
        for i in range(len(occurrences))
    }
    scores = [float(line.split()[0]) for line in lines[1:]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    for line, score in zip(lines[1:], scores):
        cosine = printed[line[len(f"  {score:7.4f}") :]]  # this occurrence's own cosine, recomputed
        assert cosine == pytest.approx(score, abs=1e-4) and cosine >= best.values[-1].item() - 1e-5
    itself = next(
        i for i, o in enumerate(occurrences) if o.sentence_no == 2
    )  # the text is sentence 2 of the corpus
    assert cosines[itself] == pytest.approx(1.0, abs=1e-6) and cosines[itself] >= best.values[-1] - 1e-5


def test_bad_input_is_one_line_and_touches_nothing(checkpoint, tmp_path, capsys):
    out = tmp_path / "contexts"
    out.mkdir()
    (out / "vectors.tsv").write_text("earlier\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    contexts = ["contexts", "--ckpt_path", str(checkpoint), "--out", str(out)]
    corpus = ["--corpus", str(SAMPLE_CORPUS)]
    in_context = ["neighbors", "--ckpt_path", str(checkpoint), *corpus, "--in-context"]
    for argv, message in [
        (
            [*contexts, *corpus, "--words", "commission,zorglub"],
            "'zorglub' is not in the vocabulary (143 words): try another word",
        ),
        (
            [*contexts, "--corpus", str(tmp_path / "nope.txt"), "--words", "commission"],
            f"corpus {tmp_path / 'nope.txt'} does not exist",
        ),
        (
            [*contexts, "--corpus", str(tmp_path / "empty.txt"), "--words", "commission"],
            f"corpus {tmp_path / 'empty.txt'} has no sentences (it is empty or holds only blank lines)",
        ),
        (
            [*contexts, *corpus, "--words", "commission", "--layer", "3"],
            "--layer 3 does not exist: this model has layers 1 to 2 (0 is the input embeddings)",
        ),
        (
            [*contexts, *corpus, "--words", " , "],
            "--words needs at least one word: --words session,commission,vote",
        ),
        (
            [*in_context, "le [parlement]" + " de la" * 6],
            "the text has 14 tokens; this model reads at most 12",
        ),
        (
            [*in_context, "le parlement"],
            "mark exactly one word of the text with brackets, as in \"le [vote] de la commission\"; got 'le parlement'",
        ),
        ([*in_context, "le [zorglub]"], "'zorglub' is not in the vocabulary (143 words): try another word"),
        (
            ["neighbors", "--ckpt_path", str(checkpoint), "--in-context", "le [parlement]"],
            "neighbors --in-context TEXT needs --corpus FILE and no other word",
        ),
        (
            ["neighbors", "--ckpt_path", str(checkpoint)],
            "neighbors needs words, or --in-context TEXT with --corpus FILE",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [
            f"error: {message}"
        ], argv
    assert (
        sorted(p.name for p in out.iterdir()) == ["vectors.tsv"]
        and (out / "vectors.tsv").read_text() == "earlier\n"
    )
