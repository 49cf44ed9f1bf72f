"""Two processes on the CPU (Lightning's DDP over gloo): sharding, one set of outputs, synced metrics, resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from conftest import run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytestmark = pytest.mark.slow  # two training processes

DDP = ("--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.devices", "2")
# 79 validation windows: an odd count, which Lightning's default DistributedSampler would
# pad by repeating one sample on the second rank (and so count it twice in the metrics).
VAL_FRACTION = ("--data.val_fraction", "0.105")

# A callback that every rank runs: what it was dealt and how many batches it trained on.
PROBE = """
import json
import lightning as L


class RankProbe(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.indices, self.batches = list(trainer.train_dataloader.sampler), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.batches += 1

    def on_train_epoch_end(self, trainer, pl_module):
        record = {"epoch": trainer.current_epoch, "world_size": trainer.world_size, "batches": self.batches, "indices": self.indices}
        with open(f"probe_rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\\n")
"""


def probe_records(workdir, rank: int) -> list[dict]:
    return [json.loads(line) for line in (workdir / f"probe_rank{rank}.jsonl").read_text().splitlines()]


def last_scalar(log_dir, tag: str) -> float:
    return EventAccumulator(str(log_dir)).Reload().Scalars(tag)[-1].value


def test_ddp_on_two_cpu_processes(workdir, monkeypatch):
    (workdir / "rank_probe.py").write_text(PROBE)
    # Both ranks import the probe; a PYTHONPATH already set (a worktree's minibert) stays behind it.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(workdir), os.environ.get("PYTHONPATH")]))
    )
    probe = ("--trainer.callbacks+=rank_probe.RankProbe",)
    run_cli("fit", "--config", "configs/tiny.yaml", *DDP, *VAL_FRACTION, *probe, cwd=workdir)

    # The cache was built once, and both ranks memory-mapped the same one.
    (cache,) = (workdir / "data" / "cache").iterdir()
    seq_len = 12  # tiny.yaml: windows of 12 tokens tile each split
    num_train = -(-len(np.load(cache / "train_tokens.npy")) // seq_len)
    num_val = -(-len(np.load(cache / "val_tokens.npy")) // seq_len)
    assert num_val % 2 == 1

    # Both ranks trained, every epoch, on two halves of the training set.
    ranks = [probe_records(workdir, rank) for rank in (0, 1)]
    for epoch in (0, 1):
        dealt = [records[epoch]["indices"] for records in ranks]
        assert all(records[epoch]["world_size"] == 2 and records[epoch]["batches"] > 0 for records in ranks)
        assert ranks[0][epoch]["batches"] == ranks[1][epoch]["batches"]
        assert len(dealt[0]) == len(dealt[1]) == (num_train + 1) // 2
        # Sample i is window i % num_train, shifted by i // num_train tokens: the same shift on both ranks.
        assert {i % num_train for i in dealt[0]} | {i % num_train for i in dealt[1]} == set(range(num_train))
        assert len({i // num_train for i in dealt[0] + dealt[1]}) == 1
    assert ranks[0][0]["indices"] != ranks[0][1]["indices"]  # reshuffled each epoch

    # Only rank 0 wrote: one log directory with its projector files, one set of checkpoints.
    assert [p.name for p in (workdir / "lightning_logs").iterdir()] == ["version_0"]
    version = workdir / "lightning_logs" / "version_0"
    assert sorted(p.name for p in (version / "projector").iterdir()) == ["epoch_0", "epoch_1"]
    steps = 2 * ranks[0][1]["batches"]
    newest_step_ckpt = f"step={steps - steps % 10}.ckpt"  # tiny.yaml: every_n_train_steps 10
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [
        f"epoch=1-step={steps}.ckpt",
        "last.ckpt",
        newest_step_ckpt,
    ]

    # The validation loss of the DDP run (reduced over both ranks) is that of one process.
    ddp_loss = last_scalar(version, "val/loss")
    run_cli(
        "validate",
        "--config",
        "configs/tiny.yaml",
        *VAL_FRACTION,
        "--ckpt_path",
        "checkpoints/last.ckpt",
        cwd=workdir,
    )
    single_loss = last_scalar(workdir / "lightning_logs" / "version_1", "val/loss")
    assert abs(ddp_loss - single_loss) < 1e-5, (ddp_loss, single_loss)

    # Resuming the DDP run from last.ckpt carries on at epoch 2 on both ranks.
    steps_per_epoch = ranks[0][0]["batches"]
    run_cli(
        "fit",
        "--config",
        "configs/tiny.yaml",
        *DDP,
        *VAL_FRACTION,
        *probe,
        "--trainer.max_epochs",
        "3",
        "--ckpt_path",
        "last",
        cwd=workdir,
    )
    assert [[r["epoch"] for r in probe_records(workdir, rank)] for rank in (0, 1)] == [[0, 1, 2], [0, 1, 2]]
    resumed = torch.load(workdir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert (resumed["epoch"], resumed["global_step"]) == (2, 3 * steps_per_epoch)
