"""Fill in the blanks: the words the model finds likeliest at each ``<mask>`` of a sentence.

This is the task the model was trained on (:mod:`minibert.masking`), asked directly:
``"la <mask> européenne a proposé"`` should give ``commission`` near the top.
"""

from __future__ import annotations

import torch

from minibert.errors import MinibertError
from minibert.explore.internals import encode_words
from minibert.module import MiniBert
from minibert.tokenizer import MASK, Vocabulary, tokenize


def fill_mask(model: MiniBert, vocab: Vocabulary, text: str, k: int) -> list[list[tuple[str, float]]]:
    """For each ``<mask>`` of ``text``, the ``k`` most likely words with their probabilities."""
    if MASK not in tokenize(text):  # "<" and ">" are not punctuation, so "<mask>" stays one token
        raise MinibertError(f"the text {text!r} has no {MASK} to fill")
    tokens, input_ids = encode_words(vocab, text, model.config.seq_len)  # (1, T)
    masked = [i for i, token in enumerate(tokens) if token == MASK]
    with torch.no_grad():
        hidden = model.encoder(input_ids)  # (1, T, D)
        probs = model.encoder.logits(hidden[0, masked]).softmax(dim=-1)  # (M, V)
    top = probs.topk(min(k, len(vocab)))
    return [
        [(vocab.itos[i], p) for p, i in zip(values, indices)]
        for values, indices in zip(top.values.tolist(), top.indices.tolist())
    ]
