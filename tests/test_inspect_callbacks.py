"""AttentionImages and EmbeddingScores in a real tiny.yaml run: what TensorBoard receives at each validation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from conftest import REPO, TEST_DATA, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minibert.cli import main
from minibert.explore.checkpoint import load_checkpoint
from minibert.explore.evaluation import analogy_scores, group_of, purity_at_k, read_analogies, read_groups

CALLBACKS = [
    {"class_path": "minibert.explore.callbacks.AttentionImages",
     "init_args": {"sentences": ["La commission votera trois propositions.", "le parlement a voté" + " , le vote" * 8]}},
    {"class_path": "minibert.explore.callbacks.EmbeddingScores",
     "init_args": {"groups": "tests/data/categories.tsv", "analogies": "questions.txt"}},
]  # fmt: skip
QUESTIONS = ": days-months\nlundi janvier mardi juillet\nmardi juillet lundi janvier\n: unknown\nlundi janvier mardi zorglub\n"


def inspect_config(folder: Path, callbacks: list[dict]) -> Path:
    """A second config whose trainer.callbacks list replaces tiny.yaml's."""
    (folder / "questions.txt").write_text(QUESTIONS, encoding="utf-8")
    path = folder / "inspect.yaml"
    path.write_text(
        yaml.safe_dump({"trainer": {"callbacks": callbacks}}, allow_unicode=True), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("inspect_run")
    shutil.copytree(REPO / "configs", root / "configs")
    shutil.copytree(TEST_DATA, root / "tests" / "data")
    run_cli(
        "fit", "--config", "configs/tiny.yaml", "--config", str(inspect_config(root, CALLBACKS)), cwd=root
    )
    return root


def events(run: Path) -> EventAccumulator:
    accumulator = EventAccumulator(
        str(run / "lightning_logs" / "version_0"), size_guidance={"images": 0, "scalars": 0}
    )
    accumulator.Reload()
    return accumulator


def test_attention_maps_go_to_the_images_tab_at_each_validation(run):
    accumulator = events(run)
    # sentence 2 has 26 tokens: it is cut to tiny.yaml's seq_len of 12 rather than stopping the run
    assert sorted(accumulator.Tags()["images"]) == ["attention/sentence_1", "attention/sentence_2"]
    validation_steps = [e.step for e in accumulator.Scalars("val/loss")]
    assert len(validation_steps) == 2  # tiny.yaml: two epochs, no sanity-check image
    for tag in ("attention/sentence_1", "attention/sentence_2"):
        images = accumulator.Images(tag)
        assert [e.step - 1 for e in images] == validation_steps  # scalars are logged at the step before
        assert all(image.width > 200 and image.height > 200 for image in images)
    first, last = accumulator.Images("attention/sentence_1")
    assert (
        first.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"
        and first.encoded_image_string != last.encoded_image_string
    )


def test_embedding_scores_are_the_evaluate_figures(run):
    accumulator = events(run)
    tags = sorted(t for t in accumulator.Tags()["scalars"] if t.startswith("embeddings/"))
    # No question of the "unknown" section is covered: it has no curve rather than a false 0.
    assert tags == [
        "embeddings/analogies",
        "embeddings/analogies/days-months",
        "embeddings/analogy_coverage",
        "embeddings/purity@5",
    ]
    (saved,) = (run / "lightning_logs" / "version_0" / "checkpoints").glob(
        "*.ckpt"
    )  # Lightning's own, after the last step
    model, vocab = load_checkpoint(saved)
    matrix = model.encoder.token_embedding.weight
    purity, _ = purity_at_k(matrix, vocab.itos, group_of(read_groups(TEST_DATA / "categories.tsv")), 5, 3)
    *_, total = analogy_scores(matrix, vocab.itos, read_analogies(run / "questions.txt"), 3)
    last = {tag: accumulator.Scalars(tag)[-1].value for tag in tags}
    assert last["embeddings/purity@5"] == pytest.approx(purity, abs=1e-6)
    assert last["embeddings/analogies"] == pytest.approx(total.accuracy) and last[
        "embeddings/analogy_coverage"
    ] == pytest.approx(2 / 3)
    assert [len(accumulator.Scalars(tag)) for tag in tags] == [2] * 4


def test_the_configs_append_both_callbacks_last():
    for name in ("quick", "base"):
        callbacks = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text(encoding="utf-8"))[
            "trainer"
        ]["callbacks"]
        assert [c["class_path"] for c in callbacks[-2:]] == [c["class_path"] for c in CALLBACKS]
        groups, analogies = (callbacks[-1]["init_args"][key] for key in ("groups", "analogies"))
        assert analogies == "benchmarks/analogies.fr.txt" and (REPO / analogies).is_file()
        assert (REPO / groups).is_file()  # in the repository: users have no ../shared


def test_a_missing_file_stops_the_run_before_the_first_step(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shutil.copytree(TEST_DATA, tmp_path / "tests" / "data")
    config = inspect_config(
        tmp_path,
        [{"class_path": "minibert.explore.callbacks.EmbeddingScores", "init_args": {"groups": "nope.tsv"}}],
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", "configs/tiny.yaml", "--config", str(config)])
    assert exit_.value.code == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1]
        == "error: groups file nope.tsv cannot be read: it does not exist"
    )
    assert not (tmp_path / "checkpoints").exists()  # stopped at setup, before the first step


def test_a_config_naming_the_callbacks_modules_of_before_still_trains(tmp_path, monkeypatch):
    """Configs, and the config.yaml saved in each run, written before minibert/explore/ name the old modules."""
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    shutil.copytree(TEST_DATA, tmp_path / "tests" / "data")
    old_names = [
        {"class_path": "minibert.callbacks.EmbeddingProjector", "init_args": {"top_k": 50}},
        {**CALLBACKS[0], "class_path": "minibert.inspect_callbacks.AttentionImages"},
        {**CALLBACKS[1], "class_path": "minibert.inspect_callbacks.EmbeddingScores"},
    ]
    config = inspect_config(tmp_path, old_names)
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", "configs/tiny.yaml", "--config", str(config)])
    version = tmp_path / "lightning_logs" / "version_0"
    assert sorted(p.name for p in (version / "projector").iterdir()) == ["epoch_0", "epoch_1"]
    tags = events(tmp_path).Tags()
    assert sorted(tags["images"]) == ["attention/sentence_1", "attention/sentence_2"]
    assert "embeddings/purity@5" in tags["scalars"]
