"""export, neighbors and fill-mask on a checkpoint: the commands end to end, and their pieces."""

from __future__ import annotations

import os
import shutil
import sys
import time
import unicodedata

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TEST_DATA, run_cli
from test_projector import EMBEDDINGS_KEY, read_metadata, read_vectors

from minibert.cli import main
from minibert.errors import MinibertError
from minibert.explore.checkpoint import load_checkpoint
from minibert.explore.fill_mask import fill_mask
from minibert.explore.neighbours import nearest_words
from minibert.explore.word_map import pca_2d, picture_words
from minibert.tokenizer import Vocabulary, tokenize


@pytest.fixture(scope="module")
def checkpoint(tiny_run):
    return tiny_run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def saved(checkpoint):
    """The checkpoint as saved, read here without minibert's loader."""
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def last_error_line(result) -> str:
    assert result.returncode == 2 and "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


# --- the commands, as a user runs them -----------------------------------------------------


def test_export_writes_every_word_and_a_picture(checkpoint, saved, tmp_path):
    words = saved["vocabulary"]["words"]
    groups = tmp_path / "groups.tsv"
    groups.write_text(
        f"# two groups\nfirst\t{words[0]} {words[1]} {words[2]}\n\nsecond\t{words[3]} {words[4]} introuvable\n",
        encoding="utf-8",
    )
    out, png = tmp_path / "export", tmp_path / "map.png"
    result = run_cli(
        "export",
        "--ckpt_path",
        str(checkpoint),
        "--top_k",
        "0",
        "--out",
        str(out),
        "--png",
        str(png),
        "--groups",
        str(groups),
        cwd=tmp_path,
    )
    assert torch.equal(read_vectors(out / "vectors.tsv"), saved["state_dict"][EMBEDDINGS_KEY][3:])
    header, rows = read_metadata(out / "metadata.tsv")
    assert header == ["word", "count"] and [row[0] for row in rows] == words
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        "left out of the picture: introuvable" in result.stdout and f"wrote {png}: 5 words" in result.stdout
    )


def test_neighbors_prints_cosine_neighbours_with_scores(checkpoint, saved, tmp_path):
    matrix = saved["state_dict"][EMBEDDINGS_KEY]
    queries = saved["vocabulary"]["words"][:2]
    out = run_cli(
        "neighbors", "--ckpt_path", str(checkpoint), *queries, "--k", "3", cwd=tmp_path
    ).stdout.splitlines()
    vocab = Vocabulary.from_dict(saved["vocabulary"])
    assert out[0] == f"{queries[0]}:" and out[4] == f"{queries[1]}:" and len(out) == 8
    for query, lines in zip(queries, (out[1:4], out[5:8])):
        shown = [(line.split()[1], float(line.split()[0])) for line in lines]
        reference = F.cosine_similarity(matrix[3:], matrix[vocab.stoi[query]][None], dim=-1)  # (V - 3,)
        reference[vocab.stoi[query] - 3] = -2  # not itself
        best = reference.topk(3)
        assert [word for word, _ in shown] == [vocab.itos[i + 3] for i in best.indices.tolist()]
        assert [score for _, score in shown] == pytest.approx(best.values.tolist(), abs=1e-4)


def test_neighbors_of_an_unknown_word_names_it(checkpoint, tmp_path):
    result = run_cli("neighbors", "--ckpt_path", str(checkpoint), "la", "zorglub", cwd=tmp_path, check=False)
    line = last_error_line(result)
    assert line.startswith("error: ") and "'zorglub'" in line and "vocabulary" in line
    assert result.stdout == ""  # every word is checked before anything is printed


def test_fill_mask_prints_the_model_probabilities(checkpoint, saved, tmp_path):
    text = "Le <mask> a voté la <mask> ."
    out = run_cli(
        "fill-mask", "--ckpt_path", str(checkpoint), text, "--k", "4", cwd=tmp_path, command="minibert"
    ).stdout.splitlines()
    assert out[0] == "not in the vocabulary, read as <unk>: voté"  # the fixture corpus never uses it
    assert out[1] == "le <mask> a voté la <mask> ."
    assert out[2] == "<mask> 1:" and out[7] == "<mask> 2:" and len(out) == 12
    model, vocab = load_checkpoint(checkpoint)
    for lines, expected in zip((out[3:7], out[8:12]), fill_mask(model, vocab, text, 4)):
        shown = [(line.split()[1], float(line.split()[0])) for line in lines]
        assert [w for w, _ in shown] == [w for w, _ in expected]
        assert [p for _, p in shown] == pytest.approx([p for _, p in expected], abs=1e-4)


def test_a_missing_checkpoint_is_one_clear_line(tmp_path):
    result = run_cli(
        "export", "--ckpt_path", "checkpoints/nowhere.ckpt", "--out", "x", cwd=tmp_path, check=False
    )
    assert last_error_line(result) == "error: checkpoint checkpoints/nowhere.ckpt does not exist"
    assert not (tmp_path / "x").exists()


# --- the pieces, in-process ----------------------------------------------------------------


def test_load_checkpoint_gives_the_saved_model_and_vocabulary(checkpoint, saved):
    model, vocab = load_checkpoint(checkpoint)
    assert not model.training and model.vocab is vocab
    assert vocab.to_dict() == saved["vocabulary"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved["state_dict"].items())


def test_a_checkpoint_from_before_model_fast_is_read_or_refused_in_one_line(
    checkpoint, saved, tmp_path, capsys
):
    # Checkpoints written before minibert/fast.py name the switch model.fused_attention.
    old = dict(saved, hyper_parameters={**saved["hyper_parameters"], "fused_attention": True})
    del old["hyper_parameters"]["fast"]
    path = tmp_path / "old.ckpt"
    torch.save(old, path)
    model, _ = load_checkpoint(path)  # the inspection commands read it
    assert model.hparams.fast is True
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved["state_dict"].items())
    with pytest.raises(SystemExit) as exit_:  # LightningCLI cannot parse it: said in one line
        main(["validate", "--config", "configs/tiny.yaml", "--ckpt_path", str(path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: checkpoint {path} was written by an older minibert, with model.fused_attention (now model.fast): "
        "`fit --ckpt_path last` still continues its run, and `python -m minibert evaluate` and the other inspection commands read it"
    ]


def test_damaged_checkpoints_are_named(checkpoint, tmp_path):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    cases = {
        truncated: r"\([\d,]+ bytes\) is damaged: truncated, or not a checkpoint file at all",
        tmp_path / "text.ckpt": r"\(16 bytes\) is damaged: truncated, or not a checkpoint file at all",
        tmp_path: "is a directory",
        tmp_path / "other.ckpt": "is not a minibert checkpoint: it has no hyper_parameters, vocabulary",
    }
    for path, message in cases.items():
        with pytest.raises(MinibertError, match=f"checkpoint {path} {message}") as error:
            load_checkpoint(path)
        assert "\n" not in str(error.value)


def test_command_errors_are_one_line_and_exit_2(checkpoint, saved, capsys):
    seq_len = saved["hyper_parameters"]["seq_len"]
    for argv, message in [
        (
            ["fill-mask", "--ckpt_path", str(checkpoint), "sans masque"],
            "error: the text 'sans masque' has no <mask> to fill",
        ),
        (
            ["fill-mask", "--ckpt_path", str(checkpoint), "la <mask>" + " mot" * seq_len],
            f"error: the text has {seq_len + 2} tokens; this model reads at most {seq_len}",
        ),
        (
            ["export", "--ckpt_path", str(checkpoint)],
            "error: export needs --out DIR (projector files), --png FILE (a picture), or both",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [message]
    with pytest.raises(SystemExit):
        main(["neighbors", "--ckpt_path", str(checkpoint), "la", "--k", "0"])
    assert "--k: expected a whole number of at least 1, got '0'" in capsys.readouterr().err


def test_mask_survives_tokenization():
    assert tokenize("L'<MASK>, la <mask>.") == ["l", "'", "<mask>", ",", "la", "<mask>", "."]


def test_nearest_words_by_cosine_against_hand_computed_scores():
    vocab = Vocabulary(["a", "b", "c", "d"], [4, 3, 2, 1])
    matrix = torch.tensor(
        [[9.0, 9.0], [9.0, 9.0], [9.0, 9.0], [1.0, 0.0], [2.0, 0.1], [0.0, 3.0], [-1.0, 0.0]]
    )
    # a = (1, 0): b at cos 2/sqrt(4.01), c at 0, d at -1; the special tokens (rows 0-2) never show
    words, scores = zip(*nearest_words(matrix, vocab, "a", 10))
    assert words == ("b", "c", "d") and scores == pytest.approx([2 / 4.01**0.5, 0.0, -1.0])
    with pytest.raises(MinibertError, match="'e' is not in the vocabulary"):
        nearest_words(matrix, vocab, "e", 2)


def test_pca_2d_matches_the_svd_reference():
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(60, 12, generator=generator) * torch.tensor(
        [5.0, 3.0] + [0.5] * 10
    )  # two clear main axes
    centered = vectors.numpy() - vectors.numpy().mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    reference = centered @ vt[:2].T  # (60, 2)
    coords = pca_2d(vectors).numpy()
    assert np.allclose(np.abs(coords), np.abs(reference), atol=1e-3)  # each axis up to its sign
    assert torch.equal(pca_2d(vectors), pca_2d(vectors))  # the same map every time


def test_picture_words_leave_out_unknown_words(capsys):
    vocab = Vocabulary(["lundi", "mardi", "janvier"], [3, 2, 1])
    assert picture_words(vocab, {"jours": ["lundi", "dimanche", "mardi"]}, 100, None) == (
        ["lundi", "mardi"],
        ["jours", "jours"],
    )
    assert "left out of the picture: dimanche" in capsys.readouterr().out
    with pytest.raises(MinibertError, match="fewer than 2"):
        picture_words(vocab, {"mois": ["janvier", "mai"]}, 100, None)
    assert picture_words(vocab, None, 2, None)[0] == ["lundi", "mardi"]


def test_missing_matplotlib_is_a_clear_message_before_any_work(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # what `import` sees when it is not installed
    with pytest.raises(SystemExit):
        main(
            [
                "export",
                "--ckpt_path",
                str(checkpoint),
                "--out",
                str(tmp_path / "out"),
                "--png",
                str(tmp_path / "map.png"),
            ]
        )
    assert (
        capsys.readouterr().err
        == 'error: drawing a picture (--png) needs matplotlib: pip install -e ".[plot]"\n'
    )
    assert not (tmp_path / "out").exists()


def test_words_typed_decomposed_or_capitalised_are_found(checkpoint, capsys):
    """As the corpus's words are: composed (NFC) and lower-case."""
    main(["neighbors", "--ckpt_path", str(checkpoint), "séance", "--k", "2"])
    typed = capsys.readouterr().out
    assert typed.startswith("séance:\n")
    for variant in (unicodedata.normalize("NFD", "séance"), "Séance", unicodedata.normalize("NFD", "SÉANCE")):
        main(["neighbors", "--ckpt_path", str(checkpoint), variant, "--k", "2"])
        assert capsys.readouterr().out == typed


def test_ckpt_path_last_is_the_newest_last_checkpoint_as_for_fit(tiny_run, tmp_path, monkeypatch, capsys):
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    shutil.copy(tiny_run / "checkpoints" / "last.ckpt", checkpoints / "last.ckpt")
    monkeypatch.chdir(tmp_path)
    for command in (
        ["neighbors", "la"],
        ["fill-mask", "la <mask> ."],
        ["evaluate", "--groups", str(TEST_DATA / "categories.tsv")],
    ):
        main([command[0], "--ckpt_path", "last", *command[1:]])
        by_path = capsys.readouterr().out
        main([command[0], "--ckpt_path", str(checkpoints / "last.ckpt"), *command[1:]])
        assert (
            capsys.readouterr().out.replace(str(checkpoints / "last.ckpt"), "checkpoints/last.ckpt")
            == by_path
        )
    # A second last.ckpt of the folder (Lightning's last-v1.ckpt), written later, is the newest.
    newer = checkpoints / "last-v1.ckpt"
    shutil.copy(checkpoints / "last.ckpt", newer)
    os.utime(newer, ns=(time.time_ns() + 10**9,) * 2)
    main(["evaluate", "--ckpt_path", "last", "--groups", str(TEST_DATA / "categories.tsv")])
    assert capsys.readouterr().out.startswith("checkpoints/last-v1.ckpt, input embeddings:")
    # What the error for a folder suggests works; 'last' where no run trained says where it looked.
    with pytest.raises(SystemExit):
        main(["neighbors", "--ckpt_path", "checkpoints", "la"])
    suggested = capsys.readouterr().err.split("such as ")[1].strip()
    main(["neighbors", "--ckpt_path", suggested, "la"])
    monkeypatch.chdir(tmp_path / "checkpoints")
    with pytest.raises(SystemExit) as exit_:
        main(["neighbors", "--ckpt_path", "last", "la"])
    assert exit_.value.code == 2 and capsys.readouterr().err.splitlines() == [
        f"error: --ckpt_path last: there is no last*.ckpt in {checkpoints / 'checkpoints'}: "
        "run the command where `fit` ran, or give the checkpoint's path"
    ]
