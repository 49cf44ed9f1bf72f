"""Resuming a run: the same steps, the same losses, the same weights as a run that never stopped."""

from __future__ import annotations

import os
import shutil
import signal
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, SAMPLE_CORPUS
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minibert.cli import main
from minibert.machinery.sampler import ResumableLoader, ResumableSampler

STEPS = 24  # with batches of 32, the tiny corpus makes 17 steps an epoch: the run crosses an epoch's end after the resume
HALF = 10  # mid-epoch


class InterruptAtStep(L.Callback):
    """Sends this process a Ctrl-C after a given step, as a person would (see SaveOnInterrupt)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def fit(workdir: Path, data_dir: Path, *extra: str) -> None:
    """``lightning fit`` in-process, with a schedule whose state matters (warm-up, then linear decay)."""
    args = [
        "fit",
        "--config",
        str(workdir / "configs" / "tiny.yaml"),
        "--data.corpus",
        str(SAMPLE_CORPUS),
        "--data.data_dir",
        str(data_dir),
        "--data.batch_size",
        "32",
        "--trainer.max_steps",
        str(STEPS),
        "--trainer.max_epochs",
        "-1",
        "--model.warmup_steps",
        "5",
        "--model.lr_decay",
        "linear",
        "--trainer.enable_checkpointing",
        "true",
        "--trainer.gradient_clip_val",  # as base.yaml: the clipping's scaling, in AdamW's step, resumes too
        "0.5",
        *extra,
    ]
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        main(args)
    finally:
        os.chdir(cwd)


def losses(run: Path) -> dict[int, float]:
    events = EventAccumulator(str(run)).Reload()
    return {event.step: event.value for event in events.Scalars("train/loss")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One run of STEPS steps, and one stopped by Ctrl-C after HALF steps then resumed with --ckpt_path last."""
    root = tmp_path_factory.mktemp("resume")
    data_dir = root / "data"
    dirs = {name: root / name for name in ("whole", "resumed")}
    for folder in dirs.values():
        shutil.copytree(REPO / "configs", folder / "configs")
    fit(dirs["whole"], data_dir)
    with pytest.raises(SystemExit) as stop:
        fit(
            dirs["resumed"],
            data_dir,
            "--trainer.callbacks+=test_resume.InterruptAtStep",
            f"--trainer.callbacks.step={HALF}",
        )
    assert stop.value.code == 128 + signal.SIGINT
    dirs["half_checkpoint"] = dirs["resumed"] / "half.ckpt"
    shutil.copy(dirs["resumed"] / "checkpoints" / "last.ckpt", dirs["half_checkpoint"])
    fit(dirs["resumed"], data_dir, "--ckpt_path", "last")
    return dirs


@pytest.mark.slow
def test_interrupted_run_saved_the_step_it_stopped_at(runs):
    checkpoint = torch.load(runs["half_checkpoint"], weights_only=True)
    assert checkpoint["global_step"] == HALF
    # Mid-epoch: the training loader's state, which Lightning keeps with its fit loop's.
    assert loader_states(checkpoint) == [{"epoch": 0, "batches_done": HALF}]
    assert "EuroparlDataModule" not in checkpoint  # where older versions kept it


def loader_states(checkpoint: dict) -> list[dict[str, int]]:
    return checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]


@pytest.mark.slow
def test_resumed_run_logs_the_same_losses_into_the_same_folder(runs):
    whole, resumed = (runs[name] / "lightning_logs" for name in ("whole", "resumed"))
    assert sorted(p.name for p in resumed.iterdir()) == ["version_0"]
    expected, got = losses(whole / "version_0"), losses(resumed / "version_0")
    second_half = range(HALF, STEPS)  # the logged step is the global step before the update
    assert [got[step] for step in second_half] == [expected[step] for step in second_half]


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_weights_and_optimiser_bit_for_bit(runs):
    assert_same_run(runs["whole"], runs["resumed"], steps=STEPS, epoch=1)


def assert_same_run(whole: Path, resumed: Path, steps: int, epoch: int) -> None:
    """The last checkpoints of two runs hold the same step, weights, optimiser and schedule, bit for bit."""
    whole, resumed = (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in (whole, resumed)
    )
    assert whole["global_step"] == resumed["global_step"] == steps
    assert whole["epoch"] == resumed["epoch"] == epoch
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    for (_, a), (_, b) in zip(
        sorted(whole["optimizer_states"][0]["state"].items()),
        sorted(resumed["optimizer_states"][0]["state"].items()),
    ):
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert whole["lr_schedulers"] == resumed["lr_schedulers"]


@pytest.mark.slow
def test_a_checkpoint_of_an_older_minibert_resumes_exactly(runs, tmp_path):
    """Older versions kept the epoch's position in the data module's state: that form still resumes."""
    checkpoint = torch.load(runs["half_checkpoint"], weights_only=True)
    checkpoint["EuroparlDataModule"] = loader_states(checkpoint)[0]
    del checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    (tmp_path / "checkpoints").mkdir()
    torch.save(checkpoint, tmp_path / "checkpoints" / "last.ckpt")
    fit(tmp_path, runs["whole"].parent / "data", "--ckpt_path", "last")
    assert_same_run(runs["whole"], tmp_path, steps=STEPS, epoch=1)


@pytest.mark.slow
def test_a_run_bounded_by_epochs_stopped_mid_epoch_resumes_exactly(tmp_path):
    """Without max_steps, Lightning builds the training loader before it reads the checkpoint (its issue #20550).

    The loader's state must reach it all the same, and Lightning must not warn that the loader is not resumable.
    """
    dirs = {name: tmp_path / name for name in ("whole", "resumed")}
    for folder in dirs.values():
        shutil.copytree(REPO / "configs", folder / "configs")
    by_epochs = ("--trainer.max_steps", "-1", "--trainer.max_epochs", "2")
    fit(dirs["whole"], tmp_path / "data", *by_epochs)
    with pytest.raises(SystemExit):
        fit(
            dirs["resumed"],
            tmp_path / "data",
            *by_epochs,
            "--trainer.callbacks+=test_resume.InterruptAtStep",
            f"--trainer.callbacks.step={HALF}",
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(dirs["resumed"], tmp_path / "data", *by_epochs, "--ckpt_path", "last")
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert_same_run(dirs["whole"], dirs["resumed"], steps=42, epoch=1)
    logged = [losses(folder / "lightning_logs" / "version_0") for folder in dirs.values()]
    assert logged[0] == logged[1] and sorted(logged[0]) == list(range(42))


# --- the sampler on its own -----------------------------------------------------------------


def test_sampler_resumed_mid_epoch_yields_the_rest_of_that_epoch():
    whole = ResumableSampler(103, seed=7)
    whole.set_epoch(3)
    resumed = ResumableSampler(103, seed=7)
    resumed.resume(epoch=3, samples_seen=48)
    resumed.set_epoch(3)
    assert list(resumed) == list(whole)[48:]
    resumed.set_epoch(4)  # the next epoch is whole again
    whole.set_epoch(4)
    assert list(resumed) == list(whole) and len(resumed) == 103


def test_the_loader_counts_the_batches_it_hands_out_across_resumes():
    """Each resume in the same epoch goes on counting from the batches already done, not from 0."""

    def loader() -> ResumableLoader:
        return ResumableLoader(range(100), batch_size=10, sampler=ResumableSampler(100, seed=1))

    whole = [batch.tolist() for batch in loader()]
    first = loader()
    assert first.state_dict() == {"epoch": 0, "batches_done": 0}
    batches = iter(first)
    seen = [next(batches).tolist() for _ in range(3)]
    for _ in range(2):  # resumed twice in the same epoch, 2 more batches each time
        state = first.state_dict()
        first = loader()
        first.load_state_dict(state)
        assert first.state_dict() == state  # before a batch is drawn, it holds what it was given
        batches = iter(first)
        seen += [next(batches).tolist() for _ in range(2)]
    assert first.state_dict() == {"epoch": 0, "batches_done": 7}
    assert seen + [batch.tolist() for batch in batches] == whole and first.state_dict()["batches_done"] == 10
    first.sampler.set_epoch(1)  # the next epoch is whole, and counted from 0
    assert len(list(first)) == 10 and first.state_dict() == {"epoch": 1, "batches_done": 10}


def test_the_loader_draws_the_epoch_s_order_when_the_first_batch_is_asked_for():
    """Lightning makes an epoch's iterator before it calls set_epoch and, on resume, load_state_dict.

    A DataLoader with workers would draw the order as its iterator is made: a run resumed in a
    later epoch would train on the first epoch's order.
    """
    loader = ResumableLoader(range(40), batch_size=10, sampler=ResumableSampler(40, seed=1), num_workers=2)
    batches = iter(loader)
    loader.sampler.set_epoch(3)
    loader.load_state_dict({"epoch": 3, "batches_done": 1})
    expected = list(loader.sampler)  # epoch 3's order, after its first batch
    assert [i for batch in batches for i in batch.tolist()] == expected and len(expected) == 30


def shards(num_samples: int, num_replicas: int, epoch: int) -> list[list[int]]:
    samplers = [
        ResumableSampler(num_samples, seed=0, num_replicas=num_replicas, rank=rank)
        for rank in range(num_replicas)
    ]
    for sampler in samplers:
        sampler.set_epoch(epoch)
    return [list(sampler) for sampler in samplers]


def test_sampler_gives_each_process_its_own_shard_of_every_epoch():
    for epoch in (0, 1):
        parts = shards(99, 3, epoch)
        assert [len(part) for part in parts] == [33, 33, 33]
        assert sorted(sum(parts, [])) == list(range(99))  # disjoint, and together the whole epoch
    # Uneven sizes are padded with a few repeated samples, as DistributedSampler does.
    parts = shards(100, 3, 0)
    assert [len(part) for part in parts] == [34, 34, 34] and set(sum(parts, [])) == set(range(100))
    assert shards(99, 1, 0) != shards(99, 1, 1)  # a new shuffle every epoch


def checkpoints_every(folder: Path, steps: int) -> Path:
    """A config of one checkpoint every ``steps`` steps and none at epoch ends, as in base.yaml."""
    config = folder / f"every_{steps}_steps.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: checkpoints, every_n_train_steps: {steps}, save_last: true}}\n"
    )
    return config


@pytest.mark.slow
def test_last_checkpoint_holds_the_final_step_and_resumes_from_it(tmp_path):
    """With one checkpoint every 10 steps (no epoch-end one, as in quick.yaml), step 23 of 23 is saved too, and resumes."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    every_10_steps = checkpoints_every(tmp_path, 10)
    last = tmp_path / "checkpoints" / "last.ckpt"
    fit(tmp_path, tmp_path / "data", "--config", str(every_10_steps), "--trainer.max_steps", "23")
    assert torch.load(last, weights_only=True)["global_step"] == 23
    fit(
        tmp_path,
        tmp_path / "data",
        "--config",
        str(every_10_steps),
        "--trainer.max_steps",
        "25",
        "--ckpt_path",
        "last",
    )
    assert torch.load(last, weights_only=True)["global_step"] == 25
    assert sorted(losses(tmp_path / "lightning_logs" / "version_0")) == list(range(25))


@pytest.mark.slow
def test_a_finished_run_continued_for_another_epoch_trains_it_whole(tmp_path):
    """last.ckpt written at a run's end is past its last epoch: the next epoch starts at its first batch.

    Lightning's batch count is still the finished epoch's there; taken for the next epoch's,
    the continued run would skip that many of its batches (with 21 an epoch, all of them).
    """
    dirs = {name: tmp_path / name for name in ("whole", "continued")}
    for folder in dirs.values():
        shutil.copytree(REPO / "configs", folder / "configs")
    # No step checkpoint within the run: last.ckpt is written when training ends, after the epoch's end.
    # A constant learning rate: the same schedule for a run of one epoch and one of two.
    never = checkpoints_every(tmp_path, 1000)
    by_epochs = ("--config", str(never), "--model.lr_decay", "constant", "--trainer.max_steps", "-1")
    by_epochs += ("--trainer.max_epochs",)
    fit(dirs["whole"], tmp_path / "data", *by_epochs, "2")
    fit(dirs["continued"], tmp_path / "data", *by_epochs, "1")
    fit(dirs["continued"], tmp_path / "data", *by_epochs, "2", "--ckpt_path", "last")
    whole, continued = (
        torch.load(folder / "checkpoints" / "last.ckpt", weights_only=True) for folder in dirs.values()
    )
    assert (continued["global_step"], whole["global_step"]) == (42, 42)
    for name, tensor in whole["state_dict"].items():
        assert torch.equal(tensor, continued["state_dict"][name]), name
    logged = [losses(folder / "lightning_logs" / "version_0") for folder in dirs.values()]
    assert logged[0] == logged[1] and sorted(logged[0]) == list(range(42))


@pytest.mark.slow
def test_a_run_bounded_by_epochs_saves_its_last_step_and_continues_from_it(tmp_path):
    """Checkpoints every 10 steps, epochs of 21: the run's steps 41 and 42 are in last.ckpt too, and a third epoch follows."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    by_epochs = (
        "--config",
        str(checkpoints_every(tmp_path, 10)),
        "--trainer.max_steps",
        "-1",
        "--trainer.max_epochs",
    )
    last = tmp_path / "checkpoints" / "last.ckpt"
    fit(tmp_path, tmp_path / "data", *by_epochs, "2")
    assert torch.load(last, weights_only=True)["global_step"] == 42
    fit(tmp_path, tmp_path / "data", *by_epochs, "3", "--ckpt_path", "last")
    assert torch.load(last, weights_only=True)["global_step"] == 63
    assert sorted(losses(tmp_path / "lightning_logs" / "version_0")) == list(range(63))
