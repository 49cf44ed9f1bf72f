"""purity@k and word analogies on vectors whose answers are known, and the evaluate and export commands."""

from __future__ import annotations

import codecs
import importlib.util
import math
import types
import unicodedata

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO
from test_projector import EMBEDDINGS_KEY

from minibert.cli import main
from minibert.errors import MinibertError
from minibert.explore.callbacks import AttentionImages, EmbeddingScores
from minibert.explore.checkpoint import load_checkpoint
from minibert.explore.evaluation import (
    AnalogySection,
    analogy_lines,
    analogy_scores,
    group_of,
    purity_at_k,
    purity_line,
    read_analogies,
    read_groups,
)


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run / "checkpoints" / "last.ckpt"


# --- purity@k ------------------------------------------------------------------------------------


def test_purity_counts_same_group_neighbours_by_hand():
    words = ["<pad>", "lundi", "mardi", "mercredi", "janvier", "février", "mars"]
    vectors = torch.tensor([
        [1.0, 0.0],  # a special token where the days are: never a neighbour
        [1.0, 0.1], [1.0, 0.2], [1.0, -0.1],  # the days, together
        [0.1, 1.0], [0.2, 1.0],  # two months, together
        [1.0, 0.16],  # a month among the days
    ])  # fmt: skip
    groups = group_of(
        {"jours": ["lundi", "mardi", "mercredi", "dimanche"], "mois": ["janvier", "février", "mars"]}
    )
    # Angles from the first axis: lundi 5.7°, mardi 11.3°, mercredi -5.7°, mars 9.1°, février 78.7°, janvier 84.3°.
    # k=1: lundi -> mars, mardi -> mars, mercredi -> lundi, janvier <-> février, mars -> mardi: 3 of 6 right.
    assert purity_at_k(vectors, words, groups, k=1, excluded=1) == (pytest.approx(3 / 6), 6)
    # k=2: lundi -> mars, mardi; mardi -> mars, lundi; mercredi -> lundi, mars; janvier -> février, mardi;
    # février -> janvier, mardi; mars -> mardi, lundi: half of each, none of mars's.
    assert purity_at_k(vectors, words, groups, k=2, excluded=1) == (pytest.approx(2.5 / 6), 6)
    # Not excluded, <pad> (0°) would be mercredi's nearest word.
    assert purity_at_k(vectors, words, groups, k=1, excluded=0) == (pytest.approx(2 / 6), 6)
    assert math.isnan(purity_at_k(vectors, words, {"dimanche": "jours"}, k=2)[0])


def test_purity_at_k_as_the_embedding_quality_benchmark_computes_it():
    spec = importlib.util.spec_from_file_location(
        "embedding_quality", REPO / "benchmarks" / "embedding_quality.py"
    )
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    words = ["<pad>", "lundi", "mardi", "mars", "avril", "table"]
    vectors = torch.tensor([[1.0, 0.05], [1.0, 0.1], [1.0, 0.2], [0.0, 1.0], [0.1, 1.0], [0.9, 0.0]])
    groups = {"lundi": "jours", "mardi": "jours", "mars": "mois", "avril": "mois", "juin": "mois"}
    # k = 2, <pad> excluded: lundi -> mardi, table (1/2); mardi -> lundi, table (1/2);
    # mars -> avril, mardi (1/2); avril -> mars, mardi (1/2); juin is not in the vocabulary.
    assert quality.purity_at_k(vectors, words, groups, k=2, excluded=1) == (pytest.approx(0.5), 4)
    # k = 1: each word's nearest neighbour is its pair
    assert quality.purity_at_k(vectors, words, groups, k=1, excluded=1) == (pytest.approx(1.0), 4)
    # <pad> no longer excluded: it is lundi's nearest (cos 0.999, mardi 0.995)
    assert quality.purity_at_k(vectors, words, groups, k=1, excluded=0) == (pytest.approx(0.75), 4)


# --- analogies -------------------------------------------------------------------------------------


def basis(*weights: float) -> list[float]:
    return [*weights, *[0.0] * (6 - len(weights))]


WORDS = ["<pad>", "a", "b", "c", "d", "e", "f", "g"]
VECTORS = torch.tensor([
    basis(0, 1, 0, 1),  # <pad>: exactly along b - a + c, excluded as a special token
    basis(1), basis(0, 1), basis(0, 0, 1),  # a, b, c: three orthogonal directions
    basis(0, 0.3, 0.3, 1),  # d: b - a + c's best answer once a, b and c are left out (score 0.55; b and c score 1)
    basis(0, 0, 0, 0, 1), basis(0, 0, 0, 0, 0, 1),  # e, f: unrelated
    basis(0, 0.2, 0.2, 1),  # g: near d, a little worse
])  # fmt: skip


def test_3cosadd_leaves_out_the_question_words_and_special_tokens():
    sections = [
        AnalogySection("first", [("a", "b", "c", "d"), ("a", "b", "c", "g")]),
        AnalogySection("second", [("e", "d", "f", "a")]),
    ]  # answer: g, near d
    first, second, total = analogy_scores(VECTORS, WORDS, sections, excluded=1)
    assert (first.name, first.correct, first.covered, first.total) == (
        "first",
        1,
        2,
        2,
    )  # d, right once, wrong once
    assert (second.correct, second.covered) == (0, 1)
    assert (total.name, total.correct, total.covered, total.total) == ("all", 1, 3, 3)
    assert first.accuracy == 0.5 and total.accuracy == pytest.approx(1 / 3) and total.coverage == 1.0


def test_a_question_outside_the_vocabulary_is_not_covered_never_wrong():
    sections = [
        AnalogySection(
            "s",
            [
                ("a", "b", "c", "d"),
                ("a", "b", "c", "inconnu"),
                ("inconnu", "b", "c", "d"),
                ("<pad>", "b", "c", "d"),
            ],
        )
    ]
    section, _ = analogy_scores(VECTORS, WORDS, sections, excluded=1)
    assert (section.correct, section.covered, section.total) == (
        1,
        1,
        4,
    )  # special tokens are not words either
    assert section.accuracy == 1.0 and section.coverage == 0.25
    (empty, _) = analogy_scores(VECTORS, WORDS, [AnalogySection("s", [("x", "y", "z", "w")])], excluded=1)
    assert (empty.covered, empty.total) == (0, 1) and math.isnan(empty.accuracy)
    assert analogy_lines([empty])[1] == "s       -       0 / 0          0.000 (0 of 1)"


def test_answers_match_a_word_by_word_reference_on_random_vectors():
    generator = torch.Generator().manual_seed(0)
    words = [f"w{i}" for i in range(60)]
    vectors = torch.randn(60, 8, generator=generator)
    questions = [
        tuple(words[i] for i in torch.randperm(60, generator=generator)[:4].tolist()) for _ in range(200)
    ]
    unit = F.normalize(vectors, dim=-1)

    def reference(a: str, b: str, c: str) -> str:  # the definition, one candidate at a time
        ia, ib, ic = (words.index(w) for w in (a, b, c))
        score = {
            w: float(unit[i] @ unit[ib] - unit[i] @ unit[ia] + unit[i] @ unit[ic])
            for i, w in enumerate(words)
            if w not in (a, b, c)
        }
        return max(score, key=score.get)

    answered = [(a, b, c, reference(a, b, c)) for a, b, c, _ in questions]
    wrong = [(a, b, c, next(w for w in words if w not in (a, b, c, d))) for a, b, c, d in answered]
    (section, _) = analogy_scores(vectors, words, [AnalogySection("s", answered + wrong)], batch_size=7)
    assert (section.correct, section.covered) == (200, 400)


def test_read_groups_skips_comments_and_names_bad_lines(tmp_path):
    path = tmp_path / "groups.tsv"
    path.write_text("# comment\njours\tlundi mardi\n\nmois\tjanvier\n", encoding="utf-8")
    assert read_groups(path) == {"jours": ["lundi", "mardi"], "mois": ["janvier"]}
    path.write_text("jours\tlundi\nmois janvier\n", encoding="utf-8")
    with pytest.raises(MinibertError, match=f"{path}, line 2: expected 'name<TAB>word word ...'"):
        read_groups(path)
    with pytest.raises(MinibertError, match="groups file .*missing.tsv cannot be read"):
        read_groups(tmp_path / "missing.tsv")


def test_read_analogies_in_word2vecs_format(tmp_path):
    path = tmp_path / "questions.txt"
    path.write_text(
        ": capital-common-countries\nAthens Greece Baghdad Iraq\n\n: family\nboy girl brother sister\nhe she his her\n",
        encoding="utf-8",
    )
    sections = read_analogies(path)
    assert [(s.name, s.questions) for s in sections] == [
        (
            "capital-common-countries",
            [("athens", "greece", "baghdad", "iraq")],
        ),  # lower-cased, as the tokenizer does
        ("family", [("boy", "girl", "brother", "sister"), ("he", "she", "his", "her")]),
    ]
    for text, message in [
        ("a b c d\n", "line 1: a question before the first ': section' line"),
        (": s\na b c\n", "line 2: expected four words 'a b c d' \\(a is to b as c is to d\\), got 'a b c'"),
        (": s\n", "has no question"),
    ]:
        path.write_text(text, encoding="utf-8")
        with pytest.raises(MinibertError, match=message):
            read_analogies(path)
    with pytest.raises(
        MinibertError, match=f"analogies file {tmp_path / 'nope.txt'} cannot be read: it does not exist"
    ):
        read_analogies(tmp_path / "nope.txt")


def test_the_french_analogy_set_is_well_formed():
    from conftest import REPO

    sections = read_analogies(REPO / "benchmarks" / "analogies.fr.txt")
    assert [s.name for s in sections] == [
        "capital-country",
        "singular-plural",
        "masculine-feminine",
        "present-imperfect",
        "infinitive-participle",
    ]
    for section in sections:
        pairs = {(a, b) for a, b, _, _ in section.questions}
        assert {(c, d) for _, _, c, d in section.questions} == pairs and len(section.questions) == len(
            pairs
        ) * (len(pairs) - 1)


# --- the commands ----------------------------------------------------------------------------------


def test_evaluate_prints_purity_and_analogies(checkpoint, tmp_path, capsys):
    model, vocab = load_checkpoint(checkpoint)
    groups_file, questions = tmp_path / "groups.tsv", tmp_path / "questions.txt"
    groups_file.write_text(
        "jours\tlundi mardi mercredi\nmois\tjanvier juillet octobre dimanche\n", encoding="utf-8"
    )
    questions.write_text(
        ": jours-mois\nlundi janvier mardi juillet\nmardi juillet lundi janvier\nlundi janvier mardi zorglub\n",
        encoding="utf-8",
    )
    main(
        [
            "evaluate",
            "--ckpt_path",
            str(checkpoint),
            "--groups",
            str(groups_file),
            "--analogies",
            str(questions),
            "--k",
            "3",
        ]
    )
    matrix = model.encoder.token_embedding.weight
    groups = group_of(read_groups(groups_file))
    purity, found = purity_at_k(matrix, vocab.itos, groups, 3, 3)
    scores = analogy_scores(matrix, vocab.itos, read_analogies(questions), 3)
    assert capsys.readouterr().out.splitlines() == [
        f"{checkpoint}, input embeddings:",
        purity_line(purity, found, groups, len(vocab), 3),
        f"analogies of {questions} (3CosAdd, the question's words excluded):",
        *analogy_lines(scores),
    ]
    assert found == 6 and (scores[0].covered, scores[0].total) == (2, 3)


def test_export_word2vec_reads_back_as_the_checkpoints_vectors(checkpoint, tmp_path, capsys):
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    out = tmp_path / "vectors.txt"
    main(
        ["export", "--ckpt_path", str(checkpoint), "--format", "word2vec", "--top_k", "0", "--out", str(out)]
    )
    lines = out.read_text(encoding="utf-8").splitlines()
    matrix = saved["state_dict"][EMBEDDINGS_KEY][3:]  # (V - 3, D): the special tokens are not exported
    assert lines[0] == f"{matrix.shape[0]} {matrix.shape[1]}"
    rows = [line.split(" ") for line in lines[1:]]
    assert [row[0] for row in rows] == saved["vocabulary"]["words"]
    assert torch.equal(torch.tensor([[float(x) for x in row[1:]] for row in rows]), matrix)
    assert (
        capsys.readouterr().out
        == f"wrote {out}: {matrix.shape[0]} words x {matrix.shape[1]}, word2vec's text format\n"
    )


def test_bad_input_is_one_line(checkpoint, tmp_path, capsys):
    (tmp_path / "bad.txt").write_text(": s\nun deux trois\n", encoding="utf-8")
    for argv, message in [
        (["evaluate"], "evaluate needs --groups FILE, --analogies FILE, or both"),
        (
            ["evaluate", "--groups", str(tmp_path / "nope.tsv")],
            f"groups file {tmp_path / 'nope.tsv'} cannot be read: it does not exist",
        ),
        (
            ["evaluate", "--analogies", str(tmp_path / "bad.txt")],
            f"{tmp_path / 'bad.txt'}, line 2: expected four words 'a b c d' (a is to b as c is to d), got 'un deux trois'",
        ),
        (
            ["export", "--format", "word2vec", "--out", str(tmp_path)],
            "export --format word2vec needs --out FILE, the file to write (not a folder)",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main([argv[0], "--ckpt_path", str(checkpoint), *argv[1:]])
        assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]


def test_files_saved_decomposed_with_a_byte_order_mark_or_old_mac_line_ends_read_alike(tmp_path):
    groups = "# jours\nJours\tLundi été\nmois\tjanvier août\n"
    questions = ": s\nÉté août hiver janvier\n"
    for form in ("NFC", "NFD"):
        for prefix, newline in [(b"", "\n"), (codecs.BOM_UTF8, "\r\n"), (codecs.BOM_UTF8, "\r")]:
            for name, text in [("groups.tsv", groups), ("questions.txt", questions)]:
                saved = unicodedata.normalize(form, text).replace("\n", newline).encode("utf-8")
                (tmp_path / name).write_bytes(prefix + saved)
            assert read_groups(tmp_path / "groups.tsv") == {
                "Jours": ["lundi", "été"],
                "mois": ["janvier", "août"],
            }
            (section,) = read_analogies(tmp_path / "questions.txt")
            assert section.questions == [("été", "août", "hiver", "janvier")]


def test_files_that_score_nothing_are_an_error_not_nan(checkpoint, tmp_path, capsys):
    """No group word in the vocabulary, or no covered question: one line and a hint, exit 2, never "nan"."""
    (tmp_path / "unknown.tsv").write_text("inconnus\tzorglub blabla\n", encoding="utf-8")
    (tmp_path / "uncovered.txt").write_text(": s\nzorglub la blabla le\n", encoding="utf-8")
    (tmp_path / "groups.tsv").write_text("jours\tlundi mardi\n", encoding="utf-8")
    vocab = f"({len(load_checkpoint(checkpoint)[1]):,} words, lower-case)"
    groups = f"none of the 2 words of {tmp_path / 'unknown.tsv'} is in the vocabulary"
    questions = (
        f"none of the 1 questions of {tmp_path / 'uncovered.txt'} has its four words in the vocabulary"
    )
    hint = "check the file's words, or evaluate a checkpoint trained on more text (configs/quick.yaml)"
    for files, message in [
        (["--groups", "unknown.tsv"], groups),
        (["--analogies", "uncovered.txt"], questions),
        (["--groups", "unknown.tsv", "--analogies", "uncovered.txt"], f"{groups}; {questions}"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(
                [
                    "evaluate",
                    "--ckpt_path",
                    str(checkpoint),
                    *(str(tmp_path / f) if "." in f else f for f in files),
                ]
            )
        captured = capsys.readouterr()
        assert exit_.value.code == 2 and captured.out == ""
        assert captured.err.splitlines() == [f"error: {message} {vocab}: nothing to score", hint]
    # One file scores, the other cannot: the score, and why there is no other.
    main(
        [
            "evaluate",
            "--ckpt_path",
            str(checkpoint),
            "--groups",
            str(tmp_path / "groups.tsv"),
            "--analogies",
            str(tmp_path / "uncovered.txt"),
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("purity@5 = ") and "nan" not in lines[1]
    assert lines[2:] == [f"no score: {questions} {vocab}"]


def test_the_training_callbacks_read_their_inputs_as_the_commands_do(checkpoint, tmp_path):
    """Files and sentences saved decomposed give the same scores and words; a file that scores nothing is said once."""
    model, vocab = load_checkpoint(checkpoint)
    groups, questions = "dates\tfévrier décembre séance\n", ": s\nséance débat février décembre\n"
    callbacks = []
    for form in ("NFC", "NFD"):
        (tmp_path / f"{form}.tsv").write_text(unicodedata.normalize(form, groups), encoding="utf-8")
        (tmp_path / f"{form}.txt").write_text(unicodedata.normalize(form, questions), encoding="utf-8")
        callbacks.append(EmbeddingScores(str(tmp_path / f"{form}.tsv"), str(tmp_path / f"{form}.txt"), k=2))
        callbacks[-1].setup(None, model, "fit")
    composed, decomposed = (callback.scores(model) for callback in callbacks)
    assert composed == decomposed and composed["embeddings/analogy_coverage"] == 1.0
    sentence = AttentionImages([unicodedata.normalize("NFD", "La séance a débattu en février.")]).sentences[0]
    assert sentence == "La séance a débattu en février." and "séance" in vocab.stoi

    (tmp_path / "unknown.tsv").write_text("inconnus\tzorglub\n", encoding="utf-8")
    unscored = EmbeddingScores(str(tmp_path / "unknown.tsv"))
    unscored.setup(None, model, "fit")
    trainer = types.SimpleNamespace(sanity_checking=False)
    with pytest.warns(
        UserWarning, match=f"no word of {tmp_path / 'unknown.tsv'} is in the vocabulary"
    ) as said:
        for _ in range(3):  # three validations, one warning
            unscored.on_validation_epoch_end(trainer, model)
    assert len(said) == 1
