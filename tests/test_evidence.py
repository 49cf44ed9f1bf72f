"""docs/experiments.md's tables and benchmarks/evidence.csv hold the same figures, and the picture is drawn from it.

The page's step tables have a ``step`` column and columns named ``RUN: SCORE`` (``base: val
accuracy``); its yardstick table has a ``yardstick`` column and score columns (``purity@5``). Each
figure of those tables is a row of the data file and each row of the data file is in a table,
so neither can change without the other.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

PAGE = REPO / "docs" / "experiments.md"
SCRIPT = REPO / "benchmarks" / "plot_evidence.py"
SCORE_COLUMNS = {
    "val accuracy": "val_accuracy",
    "top-5 accuracy": "val_top5",
    "perplexity": "perplexity",
    "purity@5": "purity_at_5",
    "analogies": "analogies",
}


def load_script():
    spec = importlib.util.spec_from_file_location("plot_evidence", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plot_evidence = load_script()


def tables(text: str) -> list[list[list[str]]]:
    """The page's Markdown tables: lists of rows of cells, the header first, the rule dropped."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    return found


def number(cell: str) -> float:
    return float(cell.replace(",", "").replace("**", ""))


def page_figures(text: str) -> tuple[dict[tuple[str, int, str], float], dict[tuple[str, str], float]]:
    """The step tables' figures by (run, step, score), and the yardstick table's by (name, score)."""
    steps: dict[tuple[str, int, str], float] = {}
    levels: dict[tuple[str, str], float] = {}
    for header, *rows in tables(text):
        if header[0] == "step":
            columns = [re.fullmatch(r"(.+): (.+)", name) for name in header[1:]]
            assert all(column and column[2] in SCORE_COLUMNS for column in columns), header
            for row in rows:
                for column, cell in zip(columns, row[1:]):
                    if cell:
                        key = (column[1], int(number(row[0])), SCORE_COLUMNS[column[2]])
                        assert key not in steps, f"{key} is in two tables"
                        steps[key] = number(cell)
        elif header[0] == "yardstick":
            scores = {
                index: SCORE_COLUMNS[name] for index, name in enumerate(header) if name in SCORE_COLUMNS
            }
            assert "purity_at_5" in scores.values(), header
            for row in rows:
                levels.update(
                    ((row[0], score), number(row[index])) for index, score in scores.items() if row[index]
                )
    return steps, levels


def data_figures(rows: list[dict]) -> tuple[dict[tuple[str, int, str], float], dict[tuple[str, str], float]]:
    steps = {
        (row["run"], row["step"], score): row[score]
        for row in rows
        if row["step"] is not None
        for score in plot_evidence.SCORES
        if row[score] is not None
    }
    levels = {
        (row["run"], score): row[score]
        for row in rows
        if row["step"] is None
        for score in plot_evidence.SCORES
        if row[score] is not None
    }
    return steps, levels


def test_the_page_and_the_data_file_hold_the_same_figures():
    page_steps, page_levels = page_figures(PAGE.read_text(encoding="utf-8"))
    data_steps, data_levels = data_figures(plot_evidence.read_evidence())
    assert {"base", "reference", "quick"} <= {run for run, _, _ in data_steps}
    assert sorted(set(page_steps) - set(data_steps)) == [], "in docs/experiments.md, not in evidence.csv"
    assert sorted(set(data_steps) - set(page_steps)) == [], "in evidence.csv, not in docs/experiments.md"
    differ = {
        key: (page_steps[key], data_steps[key]) for key in page_steps if page_steps[key] != data_steps[key]
    }
    assert differ == {}, "(page, data file)"
    assert page_levels == data_levels


def test_every_data_row_says_where_it_comes_from():
    for row in plot_evidence.read_evidence():
        assert row["run"] and row["config"] and row["machine"], row
        if row["step"] is not None:
            assert row["precision"] and row["code"], row


def test_the_table_parser_reads_runs_scores_and_yardsticks():
    text = (
        "| step | a: val accuracy | a: purity@5 |\n| ---: | ---: | ---: |\n| 2,000 | 0.344 | **0.580** |\n\n"
        "| yardstick | what | purity@5 | analogies |\n| --- | --- | ---: | ---: |\n| word2vec CBOW | gensim | 0.510 | |\n"
    )
    assert page_figures(text) == (
        {("a", 2000, "val_accuracy"): 0.344, ("a", 2000, "purity_at_5"): 0.58},
        {("word2vec CBOW", "purity_at_5"): 0.51},
    )


def test_the_page_shows_the_picture():
    assert "](evidence.png)" in PAGE.read_text(encoding="utf-8")
    assert (REPO / "docs" / "evidence.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_the_script_draws_a_png(tmp_path: Path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "pictures" / "evidence.png"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(out)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert result.stdout.strip() == f"wrote {out}"


def test_a_data_file_with_other_columns_is_refused(tmp_path: Path):
    bad = tmp_path / "evidence.csv"
    bad.write_text("run,step,purity\nbase,2000,0.365\n", encoding="utf-8")
    with pytest.raises(ValueError, match="the columns must be"):
        plot_evidence.read_evidence(bad)
