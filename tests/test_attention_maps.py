"""Attention maps: the weights drawn are the encoder's own, and they land where they belong in the picture."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import run_cli
from matplotlib import colormaps

from minibert.cli import main
from minibert.explore.attention import attention_maps, draw_attention
from minibert.explore.attention_page import attention_page
from minibert.explore.checkpoint import load_checkpoint
from minibert.explore.figures import figure_rgb
from minibert.explore.internals import record_internals
from minibert.fast import FastEncoder
from minibert.model import Encoder, EncoderConfig, MultiHeadSelfAttention
from minibert.tokenizer import Vocabulary

D, H, T, LAYERS = 16, 4, 6, 2


def small_encoder(fast: bool) -> Encoder:
    torch.manual_seed(0)
    config = EncoderConfig(
        vocab_size=30,
        seq_len=T,
        embed_dim=D,
        num_heads=H,
        num_layers=LAYERS,
        ff_dim=32,
        dropout=0.1,
        init_std=0.2,
    )
    return (FastEncoder if fast else Encoder)(config).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Two sequences: one whole, one of 4 words then 2 padding positions."""
    ids = torch.randint(3, 30, (2, T), generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(2, T, dtype=torch.bool)
    padding[1, 4:] = True
    return ids.masked_fill(padding, 0), padding


def torch_attention_weights(
    attn: MultiHeadSelfAttention, x: torch.Tensor, padding: torch.Tensor
) -> torch.Tensor:
    """PyTorch's nn.MultiheadAttention, holding the same weights, asked for its per-head weights (B, H, T, T)."""
    reference = torch.nn.MultiheadAttention(D, H, batch_first=True)
    reference.load_state_dict({  # both stack q, k, v in that order
        "in_proj_weight": attn.qkv.weight, "in_proj_bias": attn.qkv.bias,
        "out_proj.weight": attn.out_proj.weight, "out_proj.bias": attn.out_proj.bias,
    })  # fmt: skip
    with torch.no_grad():
        return reference(x, x, x, key_padding_mask=padding, need_weights=True, average_attn_weights=False)[1]


@pytest.mark.parametrize("fast", [False, True], ids=["plain", "fast"])
def test_recorded_weights_are_pytorchs_attention_weights(fast):
    encoder = small_encoder(fast)
    ids, padding = batch()
    internals = record_internals(encoder, ids, padding)
    assert len(internals.attention) == LAYERS and len(internals.hidden) == LAYERS + 1
    for layer, weights, layer_input in zip(encoder.layers, internals.attention, internals.hidden):
        assert weights.shape == (2, H, T, T) and weights.dtype == torch.float32
        reference = torch_attention_weights(layer.attn, layer.norm1(layer_input), padding)
        torch.testing.assert_close(weights, reference, atol=1e-6, rtol=0)
        torch.testing.assert_close(weights.sum(dim=-1), torch.ones(2, H, T))  # every row sums to 1
        assert (weights[1, :, :, 4:] == 0).all()  # padding columns get nothing
        assert (weights[1, :, :, :4] > 0).all()


def test_recorded_hidden_states_are_the_forward_pass():
    encoder = small_encoder(fast=True)
    ids, padding = batch()
    internals = record_internals(encoder.train(), ids, padding)  # eval inside: no dropout
    assert encoder.training  # and the mode is given back
    with torch.no_grad():
        encoder.eval()
        keep = ~padding[:, None, None, :]
        torch.testing.assert_close(internals.hidden[0], encoder.token_embedding(ids) + encoder.positions[:T])
        for layer, before, after in zip(encoder.layers, internals.hidden, internals.hidden[1:]):
            torch.testing.assert_close(after, layer(before, keep))
        torch.testing.assert_close(encoder.final_norm(internals.hidden[-1]), encoder(ids, padding))
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in encoder.modules())  # no hook left behind


def test_explicit_and_fused_encoders_draw_the_same_maps():
    explicit, fused = small_encoder(False), small_encoder(True)
    ids, padding = batch()
    for a, b in zip(
        record_internals(explicit, ids, padding).attention, record_internals(fused, ids, padding).attention
    ):
        torch.testing.assert_close(
            a, b, atol=1e-6, rtol=0
        )  # layer 2 reads layer 1's output, equal up to rounding


def test_attention_maps_of_a_sentence_mark_unknown_words():
    encoder = small_encoder(fast=True)
    vocab = Vocabulary([f"w{i}" for i in range(27)], list(range(27, 0, -1)))
    labels, weights = attention_maps(encoder, vocab, "w1 w2 inconnu w3", T)
    assert labels == ["w1", "w2", "inconnu*", "w3"] and weights.shape == (LAYERS, H, 4, 4)
    ids = torch.tensor([vocab.encode(["w1", "w2", "inconnu", "w3"])])
    assert torch.equal(weights, torch.cat(record_internals(encoder, ids).attention))


# --- the picture -----------------------------------------------------------------------------


def test_one_weight_set_by_hand_shows_in_its_map_row_and_column():
    weights = torch.zeros(2, 3, 4, 4)  # (L, H, T, T)
    weights[1, 2, 0, 3] = 1.0  # layer 2, head 3: the first token looks at the last one only
    labels = ["le", "vote", "de", "demain"]
    figure = draw_attention(weights, labels, "by hand")
    image = figure_rgb(figure)  # (height, width, 3)
    bright, dark = (np.array(colormaps["viridis"](v)[:3]) * 255 for v in (1.0, 0.0))

    axes = figure.axes[0]  # one mosaic of maps, a blank line between them
    step = 4 + 1

    def colour(layer: int, head: int, query: int, key: int) -> np.ndarray:
        x, y = axes.transData.transform(
            (head * step + key, layer * step + query)
        )  # pixels from the bottom left
        return image[image.shape[0] - round(y), round(x)].astype(float)

    assert np.abs(colour(1, 2, 0, 3) - bright).max() < 8
    for cell in [(1, 2, 0, 2), (1, 2, 3, 0), (0, 2, 0, 3), (1, 1, 0, 3)]:
        assert np.abs(colour(*cell) - dark).max() < 8, cell
    x, y = axes.transData.transform((4, 0))  # the blank column between two maps is white
    assert (image[image.shape[0] - round(y), round(x)] > 245).all()
    keys = [t.get_text() for t in axes.get_xticklabels()]
    queries = [t.get_text() for t in axes.get_yticklabels()]
    assert keys == labels * 3 and queries == labels * 2  # below every column of maps, left of every row
    heads, layers = axes.child_axes  # the secondary axes above and right of the mosaic
    names = [t.get_text() for t in heads.get_xticklabels()] + [t.get_text() for t in layers.get_yticklabels()]
    assert names == ["head 1", "head 2", "head 3", "layer 1", "layer 2"]


def test_the_page_holds_the_weights_and_fetches_nothing():
    weights = torch.rand(2, 3, 4, 4).softmax(dim=-1)
    page = attention_page(weights, ["le", "</script>", "de", "demain"], "<titre>")
    assert "http" not in page and "&lt;titre&gt;" in page
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)[1])
    assert data["tokens"][1] == "</script>"
    np.testing.assert_allclose(np.array(data["weights"]), weights.numpy(), atol=5e-5)


# --- the command -------------------------------------------------------------------------------


def test_attention_command_draws_the_checkpoints_maps(tiny_run, tmp_path):
    checkpoint = tiny_run / "checkpoints" / "last.ckpt"
    out, page = tmp_path / "maps" / "attention.png", tmp_path / "attention.html"
    text = "La commission a voté ."
    result = run_cli(
        "attention",
        "--ckpt_path",
        str(checkpoint),
        text,
        "--out",
        str(out),
        "--html",
        str(page),
        cwd=tmp_path,
    )
    model, vocab = load_checkpoint(checkpoint)
    labels, weights = attention_maps(model.encoder, vocab, text, model.config.seq_len)
    assert result.stdout.splitlines() == [
        "not in the vocabulary, read as <unk> (marked *): voté*",  # the fixture corpus never uses it
        f"wrote {out}: 2 layers x 2 heads, 5 tokens",
        f"wrote {page}",
    ]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(
        re.search(r'type="application/json">(.*?)</script>', page.read_text(encoding="utf-8"), re.S)[1]
    )
    assert data["tokens"] == labels == ["la", "commission", "a", "voté*", "."]
    np.testing.assert_allclose(np.array(data["weights"]), weights.numpy(), atol=5e-5)


def test_attention_bad_input_is_one_line_and_writes_nothing(tiny_run, tmp_path, capsys):
    checkpoint = str(tiny_run / "checkpoints" / "last.ckpt")
    out = tmp_path / "attention.png"
    out.write_bytes(b"earlier picture")
    seq_len = load_checkpoint(checkpoint)[0].config.seq_len
    for argv, message in [
        (
            [checkpoint, "la" + " commission" * seq_len, "--out", str(out)],
            f"the text has {seq_len + 1} tokens; this model reads at most {seq_len}",
        ),
        ([checkpoint, "  ", "--out", str(out)], "the text '  ' has no words"),
        (
            [checkpoint, "la commission"],
            "attention needs --out FILE.png (a picture), --html FILE (a page), or both",
        ),
        (
            [str(tmp_path / "nowhere.ckpt"), "la commission", "--out", str(out)],
            f"checkpoint {tmp_path / 'nowhere.ckpt'} does not exist",
        ),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["attention", "--ckpt_path", *argv])
        assert exit_.value.code == 2 and capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert out.read_bytes() == b"earlier picture"
