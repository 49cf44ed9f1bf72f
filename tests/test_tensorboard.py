"""The real TensorBoard, started over real runs, shows one projector tensor per epoch with the right words."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_projector import EMBEDDINGS_KEY, read_vectors, tiny_top_k

from minibert.cli import main

STARTUP_TIMEOUT = 90  # seconds: TensorBoard's imports are slow on a busy machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TensorBoard:
    """A ``tensorboard --logdir`` server in a process group of its own, asked through HTTP."""

    def __init__(self, logdir: Path) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir",
                str(logdir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # its data server dies with it
        )

    def get(self, route: str, **params: str) -> bytes:
        url = f"http://127.0.0.1:{self.port}/data/plugin/projector/{route}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def wait_for_runs(self, expected: list[str]) -> None:
        """Wait until the server answers and has read the runs (it loads the log directory in the background)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(
                    f"tensorboard exited ({self.process.returncode}): {self.process.stderr.read().decode()}"
                )
            try:
                if sorted(json.loads(self.get("runs"))) == sorted(expected):
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.3)
        pytest.fail(f"tensorboard did not list the runs {expected} within {STARTUP_TIMEOUT} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process.stderr.close()


@pytest.fixture
def tensorboard() -> Iterator[Callable[[Path], TensorBoard]]:
    """Start servers with ``tensorboard(logdir)``; every one is stopped at the end, pass or fail."""
    servers: list[TensorBoard] = []

    def start(logdir: Path) -> TensorBoard:
        servers.append(TensorBoard(logdir))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def embeddings(server: TensorBoard, run: str) -> list[dict]:
    return json.loads(server.get("info", run=run))["embeddings"]


def tensor(server: TensorBoard, run: str, name: str, shape: list[int]) -> torch.Tensor:
    data = server.get("tensor", run=run, name=name)
    assert len(data) == shape[0] * shape[1] * 4  # float32
    return torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(shape).copy())


def test_tensorboard_shows_one_tensor_per_epoch_with_the_words(tiny_run, tensorboard):
    checkpoint = torch.load(tiny_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    matrix = checkpoint["state_dict"][EMBEDDINGS_KEY]  # (V, D)
    top_k = tiny_top_k()
    server = tensorboard(tiny_run / "lightning_logs")
    server.wait_for_runs(["version_0"])

    listed = embeddings(server, "version_0")
    assert [e["tensorName"] for e in listed] == [
        "word_embeddings/(newest) epoch_001",
        "word_embeddings/epoch_000",
    ]
    projector = tiny_run / "lightning_logs" / "version_0" / "projector"
    for entry, epoch in zip(listed, ("epoch_1", "epoch_0")):
        assert entry["tensorShape"] == [top_k, matrix.shape[1]]
        served = tensor(server, "version_0", entry["tensorName"], entry["tensorShape"])
        assert torch.equal(served, read_vectors(projector / epoch / "vectors.tsv"))
        rows = server.get("metadata", run="version_0", name=entry["tensorName"]).decode().split("\n")
        assert rows[0] == "word\tcount" and rows[-1] == ""
        assert [row.split("\t")[0] for row in rows[1:-1]] == checkpoint["vocabulary"]["words"][:top_k]
    served = tensor(server, "version_0", listed[0]["tensorName"], listed[0]["tensorShape"])
    assert torch.equal(served, matrix[3 : 3 + top_k])  # the newest epoch is the saved model


def test_resumed_run_keeps_every_earlier_epoch_once(tiny_run, tmp_path, tensorboard, monkeypatch):
    """A second fit from last.ckpt into the same version folder adds epoch 2 beside epochs 0 and 1."""
    resumed = tmp_path / "resumed"
    shutil.copytree(tiny_run, resumed)
    epoch_0 = (
        resumed / "lightning_logs" / "version_0" / "projector" / "epoch_0" / "vectors.tsv"
    ).read_bytes()
    monkeypatch.chdir(
        resumed
    )  # in-process: the same command as `lightning fit ...`, without a second start-up
    main(
        [
            "fit",
            "--config",
            "configs/tiny.yaml",
            "--ckpt_path",
            "last",
            "--trainer.max_epochs",
            "3",
            "--trainer.logger.init_args.version",
            "0",
        ]
    )
    server = tensorboard(resumed / "lightning_logs")
    server.wait_for_runs(["version_0"])
    listed = embeddings(server, "version_0")
    assert [e["tensorName"] for e in listed] == [
        "word_embeddings/(newest) epoch_002",
        "word_embeddings/epoch_001",
        "word_embeddings/epoch_000",
    ]
    assert (
        resumed / "lightning_logs" / "version_0" / "projector" / "epoch_0" / "vectors.tsv"
    ).read_bytes() == epoch_0
    served = tensor(server, "version_0", "word_embeddings/epoch_000", listed[0]["tensorShape"])
    assert torch.equal(
        served,
        read_vectors(resumed / "lightning_logs" / "version_0" / "projector" / "epoch_0" / "vectors.tsv"),
    )


def test_a_tensorboard_started_before_training_lists_each_new_epoch_without_a_restart(
    workdir, tensorboard, monkeypatch
):
    """TensorBoard rereads the projector's list only when its set of runs changes: the newest epoch's folder is a run."""
    logs = workdir / "lightning_logs"
    logs.mkdir()
    server = tensorboard(logs)  # before any training, as people start it
    monkeypatch.chdir(workdir)
    main(["fit", "--config", "configs/tiny.yaml", "--trainer.max_epochs", "1"])
    server.wait_for_runs(["version_0"])
    assert [e["tensorName"] for e in embeddings(server, "version_0")] == [
        "word_embeddings/(newest) epoch_000"
    ]
    # The run goes on (the same version folder) while the server keeps running.
    main(["fit", "--config", "configs/tiny.yaml", "--ckpt_path", "last", "--trainer.max_epochs", "3"])
    expected = [
        "word_embeddings/(newest) epoch_002",
        "word_embeddings/epoch_001",
        "word_embeddings/epoch_000",
    ]
    deadline = time.monotonic() + 60
    while (
        listed := [e["tensorName"] for e in embeddings(server, "version_0")]
    ) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
    assert listed == expected, "a running TensorBoard did not list the new epochs within a minute"
    newest = tensor(server, "version_0", expected[0], embeddings(server, "version_0")[0]["tensorShape"])
    assert torch.equal(newest, read_vectors(logs / "version_0" / "projector" / "epoch_2" / "vectors.tsv"))
