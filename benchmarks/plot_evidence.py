"""The picture of docs/experiments.md: validation accuracy and purity@5 against training steps.

It draws what ``benchmarks/evidence.csv`` holds, nothing else, so the picture and the
tables of docs/experiments.md (which tests/test_evidence.py keeps equal to the file) show
the same figures::

    python benchmarks/plot_evidence.py --out docs/evidence.png

The data file has one row per scored checkpoint: ``run`` (the label of its curve and of its
table's columns in docs/experiments.md, such as ``base``), ``config``, ``precision``,
``machine`` and ``code`` (where the figures come from), ``step``, and the scores, empty where
not measured: ``val_accuracy`` and ``val_top5`` (15% of the held-out words masked),
``perplexity``, ``purity_at_5`` (the dev groups) and ``analogies`` (3CosAdd accuracy on
``benchmarks/analogies.fr.txt``). The picture shows ``val_accuracy`` and ``purity_at_5``. A row
without a step is a yardstick (word2vec): its purity@5 is drawn as a level. A new run (a bf16 base.yaml on a GPU, say) is new rows under a new ``run`` label,
and its table in docs/experiments.md.

Needs matplotlib (``pip install -e ".[plot]"``).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path

DATA = Path(__file__).with_name("evidence.csv")
SCORES = ("val_accuracy", "val_top5", "perplexity", "purity_at_5", "analogies")
FIELDS = ("run", "config", "precision", "machine", "code", "step", *SCORES)
PANELS = (("val_accuracy", "validation accuracy (15% masked)"), ("purity_at_5", "purity@5, dev groups"))
STEP_TICKS = (200, 500, 1000, 2000, 5000, 10000, 30000)
PRECISION = {"32-true": "fp32", "bf16-mixed": "bf16 mixed", "16-mixed": "fp16 mixed"}


def read_evidence(path: str | Path = DATA) -> list[dict[str, str | int | float | None]]:
    """The data file's rows: ``step`` an int (None for a yardstick), scores floats (None where empty)."""
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        if tuple(reader.fieldnames or ()) != FIELDS:
            raise ValueError(f"{path}: the columns must be {','.join(FIELDS)}, not {reader.fieldnames}")
        rows: list[dict[str, str | int | float | None]] = []
        for row in reader:
            parsed: dict[str, str | int | float | None] = dict(row)
            parsed["step"] = int(row["step"]) if row["step"] else None
            for score in SCORES:
                parsed[score] = float(row[score]) if row[score] else None
            rows.append(parsed)
    return rows


def curves(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """The runs' rows by run label, in the file's order, each sorted by step."""
    runs: dict[str, list[dict]] = {}
    for row in rows:
        if row["step"] is not None:
            runs.setdefault(row["run"], []).append(row)
    return {run: sorted(points, key=lambda row: row["step"]) for run, points in runs.items()}


def yardsticks(rows: Sequence[dict]) -> list[dict]:
    """The rows without a step: levels of purity@5 (word2vec)."""
    return [row for row in rows if row["step"] is None]


def draw(rows: Sequence[dict], out: str | Path) -> None:
    """Two panels side by side, steps on a log scale so that quick.yaml's 1,700 steps show."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FixedLocator, NullLocator

    figure = Figure(figsize=(11, 5.2), layout="constrained")
    axes = figure.subplots(1, 2)
    runs = curves(rows)
    for ax, (score, title) in zip(axes, PANELS):
        for run, points in runs.items():
            first = points[0]
            precision = PRECISION.get(first["precision"], first["precision"])
            label = f"{run}: {first['config']}, {precision}, {first['machine']}, code {first['code']}"
            steps = [row["step"] for row in points if row[score] is not None]
            values = [row[score] for row in points if row[score] is not None]
            ax.plot(steps, values, marker="o", markersize=3.5, label=label if ax is axes[0] else None)
        if score == "purity_at_5":
            for row, style in zip(yardsticks(rows), ("--", ":", "-.")):
                ax.axhline(row["purity_at_5"], color="grey", linestyle=style, linewidth=1.2)
                ax.annotate(
                    f"{row['run']} {row['purity_at_5']:.3f}",
                    (STEP_TICKS[0], row["purity_at_5"]),
                    textcoords="offset points",
                    xytext=(2, 3),
                    fontsize=8,
                    color="dimgrey",
                )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(STEP_TICKS))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{tick:,}" for tick in STEP_TICKS])
        ax.set_xlim(STEP_TICKS[0] * 0.85, STEP_TICKS[-1] * 1.15)
        ax.set_xlabel("training steps (batches of 128), log scale")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    figure.legend(loc="outside lower center", fontsize=8)
    figure.suptitle("Europarl, first 30,000 French sentences: each point a checkpoint scored afterwards")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # No "Software" entry: the file changes only when the figures or the drawing do.
    figure.savefig(out, dpi=100, metadata={"Software": None})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DATA, help=f"the figures (default: {DATA.name} beside this script)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/evidence.png"), help="the PNG to write")
    args = parser.parse_args(argv)
    draw(read_evidence(args.data), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
