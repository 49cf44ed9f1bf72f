"""benchmarks/levers.py: each lever turns its speed code off and on again, and the script prints its table."""

from __future__ import annotations

import pytest
import torch
from conftest import REPO, run_step_benchmark

from minibert import fast, fused_loss
from minibert.machinery import clipping


def test_each_lever_turns_its_code_off_and_on_again(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import levers

    monkeypatch.setattr(fused_loss, "c_library", fused_loss.c_library)  # restored after the test
    for name in ("c_library", "attention_library", "layer_norm_library"):
        monkeypatch.setattr(fast, name, getattr(fast, name))
    monkeypatch.setattr(fused_loss, "logits_gradient", fused_loss.logits_gradient)
    monkeypatch.setattr(fast.TiedEmbedding, "add_into_head", True)
    monkeypatch.setattr(clipping, "fold_into_step", True)

    def libraries():
        return fused_loss.c_library, fast.c_library, fast.attention_library, fast.layer_norm_library

    originals = *libraries(), fused_loss.logits_gradient
    switches = levers.lever_switches()
    assert set(switches) == set(levers.LEVERS)
    switches["c_loops"](False)
    assert all(library.get() is None for library in libraries())
    switches["c_dropout"](True)
    assert fused_loss.c_library.get() is None and fast.c_library is originals[1]
    switches["tied_gradient"](False)
    assert not fast.TiedEmbedding.add_into_head
    switches["clip_in_step"](False)
    assert not clipping.folds_into_step(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True))
    switches["kept_buffer"](False)
    like = torch.zeros(1)
    first, second = (fused_loss.logits_gradient.take(2, 3, like) for _ in range(2))
    assert first.data_ptr() != second.data_ptr()  # a new block every step, where the kept one is reused
    for turn in switches.values():
        turn(True)
    assert fast.TiedEmbedding.add_into_head and clipping.fold_into_step
    assert (*libraries(), fused_loss.logits_gradient) == originals


@pytest.mark.slow
def test_the_script_times_both_versions(tmp_path):
    done = run_step_benchmark("levers.py", "--lever", "c_loops", "--pairs", "3", data_dir=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("lever c_loops, bf16-mixed, ") and "3 pairs" in lines[0]
    assert lines[3].startswith("| off | ") and lines[4].startswith("| on | ")
    assert lines[5].startswith("off - on, median of the paired differences: ")
