"""The real TensorBoard, started over real runs, shows one projector tensor per epoch with the right words."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_projector import EMBEDDINGS_KEY, frontend_order, read_vectors, tiny_top_k

from minibert.cli import main
from minibert.explore.projector import epoch_tensor_name

pytestmark = pytest.mark.slow  # every test starts a TensorBoard server

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
            # A file, not a pipe: a pipe that nobody reads would stop the server once full.
            stderr=(log := tempfile.TemporaryFile()),
            start_new_session=True,  # its data server dies with it
        )
        self.log = log

    def get(self, route: str, **params: str) -> bytes:
        url = f"http://127.0.0.1:{self.port}/data/plugin/projector/{route}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.read()

    def wait_for_runs(self, expected: list[str]) -> None:
        """Wait until the server answers and has read the runs (it loads the log directory in the background)."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.log.seek(0)
                pytest.fail(f"tensorboard exited ({self.process.returncode}): {self.log.read().decode()}")
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
        self.log.close()


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
        "word_embeddings/9998 epoch 1",
        "word_embeddings/9999 epoch 0",
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
        "word_embeddings/9997 epoch 2",
        "word_embeddings/9998 epoch 1",
        "word_embeddings/9999 epoch 0",
    ]
    assert (
        resumed / "lightning_logs" / "version_0" / "projector" / "epoch_0" / "vectors.tsv"
    ).read_bytes() == epoch_0
    served = tensor(server, "version_0", "word_embeddings/9999 epoch 0", listed[0]["tensorShape"])
    assert torch.equal(
        served,
        read_vectors(resumed / "lightning_logs" / "version_0" / "projector" / "epoch_0" / "vectors.tsv"),
    )


class ProjectorPage:
    """TensorBoard's projector page, by the requests it makes, in its order (projector_binary.js).

    When it loads: the runs, once; the first run's config (its list of tensors), kept for the
    page's life; then the tensor it opens (:func:`frontend_order`'s first) and its metadata.
    Choosing another tensor in the drop-down asks for that tensor and its metadata, by name,
    from the list read at load. The page writes each query into its URL as it is, unquoted:
    the browser only percent-encodes what a URL cannot hold (a space becomes %20).
    """

    def __init__(self, server: TensorBoard) -> None:
        self.server = server
        self.run = json.loads(self.request("runs"))[0]
        self.config = json.loads(self.request(f"info?run={self.run}"))
        self.names = frontend_order(self.config["embeddings"])
        self.opened, (self.vectors, self.words) = self.names[0], self.choose(self.names[0])

    def choose(self, name: str) -> tuple[torch.Tensor, list[str]]:
        """The vectors (N, D) and words that the page shows for the tensor ``name``."""
        (rows, dim) = next(e["tensorShape"] for e in self.config["embeddings"] if e["tensorName"] == name)
        data = self.request(f"tensor?run={self.run}&name={name}&num_rows=100000")
        metadata = self.request(f"metadata?run={self.run}&name={name}&num_rows=100000").decode()
        vectors = torch.from_numpy(np.frombuffer(data, dtype=np.float32).reshape(rows, dim).copy())
        return vectors, [line.split("\t")[0] for line in metadata.split("\n")[1:-1]]

    def request(self, route: str) -> bytes:
        url = f"http://127.0.0.1:{self.server.port}/data/plugin/projector/{route}"
        try:
            with urllib.request.urlopen(urllib.parse.quote(url, safe=":/?&=()"), timeout=30) as response:
                return response.read()
        except urllib.error.HTTPError as error:  # what the page would show as "Error fetching ..."
            raise AssertionError(f"{route}: HTTP {error.code} {error.read().decode()}") from None


def test_an_open_page_keeps_working_across_epochs_and_a_new_page_opens_the_newest(
    workdir, tensorboard, monkeypatch
):
    """A page loaded before an epoch ends opens every epoch it lists after it; one loaded after opens the new one.

    TensorBoard rereads the projector's list only when its set of runs changes: the newest
    epoch's folder is a run. Pages are loaded again and again while epochs are written, as a
    user reloading at any moment would: none may fail.
    """
    logs = workdir / "lightning_logs"
    logs.mkdir()
    server = tensorboard(logs)  # before any training, as people start it
    monkeypatch.chdir(workdir)
    main(["fit", "--config", "configs/tiny.yaml", "--trainer.max_epochs", "1"])
    server.wait_for_runs(["version_0"])
    epoch_file = logs / "version_0" / "projector" / "epoch_{}" / "vectors.tsv"
    before = ProjectorPage(server)
    assert before.names == [epoch_tensor_name(0)]
    epoch_0 = read_vectors(Path(str(epoch_file).format(0)))
    assert torch.equal(before.vectors, epoch_0)

    stop, failures = threading.Event(), []

    def reload_again_and_again() -> None:
        while not stop.is_set():
            try:
                ProjectorPage(server)
            except Exception as error:  # noqa: BLE001 - any failure is the test's
                failures.append(error)
            stop.wait(0.2)  # a few loads a second: training must go on beside them

    reloads = threading.Thread(target=reload_again_and_again)
    reloads.start()
    try:  # the run goes on (the same version folder) while the server keeps running
        main(["fit", "--config", "configs/tiny.yaml", "--ckpt_path", "last", "--trainer.max_epochs", "3"])
        expected = [epoch_tensor_name(epoch) for epoch in (2, 1, 0)]
        deadline = time.monotonic() + 60
        while (after := ProjectorPage(server)).names != expected and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        stop.set()
        reloads.join()
    assert not failures, failures[0]
    assert after.names == expected, "a running TensorBoard did not list the new epochs within a minute"
    assert after.opened == epoch_tensor_name(2)  # the newest opens first
    assert torch.equal(after.vectors, read_vectors(Path(str(epoch_file).format(2))))
    assert after.words == before.words  # the same top words, labelled
    # The page loaded at epoch 0 lists what it listed then, and each of its names still opens that epoch.
    assert before.names == [epoch_tensor_name(0)]
    for name in before.names:
        assert torch.equal(before.choose(name)[0], epoch_0)
    for epoch, name in zip((2, 1, 0), after.names):
        assert torch.equal(after.choose(name)[0], read_vectors(Path(str(epoch_file).format(epoch))))
