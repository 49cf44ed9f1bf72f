"""minibert on a GPU, in one prepared run: the machine, throughput, a whole base.yaml run, a profile of a step.

    python benchmarks/gpu_check.py --corpus europarl30k.fr.txt --groups categories.dev.tsv --out DIR
    python benchmarks/gpu_check.py --device cpu --smoke --out DIR   # the same code paths, tiny, in seconds

Made for a GPU machine lent for minutes (docs/gpu.md gives the command and how to bring what it
needs): every part is bounded, a part that fails is recorded and the next one runs, and the
results are written again after each part, so that a run cut short keeps what it measured.
It writes ``DIR/gpu_check.json`` (every figure), ``DIR/gpu_check.md`` (the tables) and
``DIR/fit.log`` (the end of the training run's output). The parts, in the order ``--parts`` gives:

- ``machine``: GPU, driver, CUDA, torch and the libraries;
- ``loader``: the training DataLoader's time a batch, the copy to the GPU and the masking there;
- ``fit``: ``python -m minibert fit --config configs/base.yaml`` on ``--corpus``, in a scratch
  folder, timed from start to finish: the last validation's loss and accuracy, purity@5 logged
  by the run (on the config's groups) and of the last checkpoint's embeddings on ``--groups``,
  and the training rate it logged;
- ``throughput``: benchmarks/throughput.py's two models (minibert and BertForMaskedLM with PyTorch's
  fused attention) on the same batches, eager then compiled (minibert's static-shape step;
  CUDA graphs on a GPU): tokens per second of the median step, step times, tokens per second
  of steps queued back to back (as training runs them), peak GPU memory, warm-up (compilation)
  time; and one step of each under torch.profiler: time in kernels against the gaps between them.

``--smoke`` runs every part with the test suite's corpus, a model of 7,000 parameters and a few
steps (``tests/test_static_step.py`` runs it, so that this script cannot rot): compiled with
``aot_eager`` (traced, no kernels generated) in the throughput part; in the training run with
``TORCH_COMPILE_DISABLE=1``, where the static step falls back to eager as it does wherever
compiling fails, and says so.

The exit status is 1 if any part failed (its error is in the JSON), else 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runs from a checkout where minibert is not installed

import throughput  # noqa: E402  (benchmarks/throughput.py, beside this file)
import torch  # noqa: E402

from minibert.data import EuroparlDataModule  # noqa: E402
from minibert.masking import IGNORE_INDEX, mask_tokens  # noqa: E402

DEMO_GROUPS = REPO / "benchmarks" / "categories.demo.tsv"
PARTS = ("machine", "loader", "fit", "throughput")
PROGRESS_BAR = re.compile(
    r"it/s\]|step/s|\x1b\[A|^\s*\S*:?\s*\|"
)  # tqdm's lines in the training run's output
TARGETS = {  # on one H100, docs/benchmarks.md
    "tokens_per_sec": 1_300_000,
    "fit_wall_s": 180,
    "speedup_vs_hf": 3.0,
}
# The smoke run's sizes: the test suite's corpus, a model and run of seconds on a CPU.
SMOKE_SIZES = [
    *("--vocab-size 500 --max-sentences 600 --batch-size 16 --seq-len 12".split()),
    *("--embed-dim 16 --num-heads 2 --num-layers 2 --ff-dim 32".split()),
]
SMOKE_FIT = [
    *("--data.vocab_size 500 --data.batch_size 16 --data.seq_len 12 --data.max_sentences 600".split()),
    *("--model.embed_dim 16 --model.num_heads 2 --model.num_layers 2 --model.ff_dim 32".split()),
    *("--trainer.max_steps 8 --trainer.val_check_interval 4 --trainer.log_every_n_steps 2".split()),
    *("--trainer.accelerator cpu --trainer.precision 32-true --model.compile true".split()),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for gpu_check.json, gpu_check.md and fit.log")
    p.add_argument(
        "--corpus", default=str(throughput.DEFAULT_CORPUS), help="Europarl French, one sentence a line"
    )
    p.add_argument(
        "--groups",
        default=str(DEMO_GROUPS),
        help="word groups for purity@5 of the trained embeddings",
    )
    p.add_argument("--device", default="cuda", help="cuda, or cpu for the smoke run")
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes, a few steps: checks that every part runs"
    )
    p.add_argument(
        "--parts", default=",".join(PARTS), help=f"which parts, in this order (of {', '.join(PARTS)})"
    )
    p.add_argument(
        "--work", help="scratch folder for the caches and the training run (default: a new temporary one)"
    )
    p.add_argument("--fit-timeout", type=float, default=420, help="seconds the training run may take")
    p.add_argument(
        "--fit-args", default="", help="more options for the training run, e.g. '--data.num_workers 4'"
    )
    p.add_argument("--steps", type=int, default=100, help="timed steps of each model in each mode")
    p.add_argument("--queued-steps", type=int, default=200, help="steps of each model queued back to back")
    args = p.parse_args(argv)
    if args.smoke:
        args.corpus = str(REPO / "tests" / "data" / "sample.fr.txt")
        args.steps, args.queued_steps = min(args.steps, 4), min(args.queued_steps, 4)
    args.parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        p.error(f"--parts: {', '.join(sorted(unknown))} not among {', '.join(PARTS)}")
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        p.error(
            "--device cuda: no CUDA GPU is visible to torch (use --device cpu --smoke for a check without one)"
        )
    return args


def say(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", flush=True)


def on_gpu(args: argparse.Namespace) -> bool:
    return torch.device(args.device).type == "cuda"


# --- the machine ------------------------------------------------------------------------------


def machine(args: argparse.Namespace) -> dict:
    import lightning
    import torchmetrics

    info = {
        "host": throughput.machine(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": lightning.__version__,
        "torchmetrics": torchmetrics.__version__,
    }
    for name in ("transformers", "triton"):
        with contextlib.suppress(ImportError):
            info[name] = __import__(name).__version__
    if on_gpu(args):
        props = torch.cuda.get_device_properties(0)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "multiprocessors": props.multi_processor_count,
            "compute_capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
        }
        query = "name,driver_version,memory.total,clocks.max.sm,power.limit"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            smi = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            info["nvidia_smi"] = smi.stdout.strip()
            info["driver"] = smi.stdout.split(",")[1].strip() if smi.stdout.count(",") >= 1 else None
    return info


# --- the data loader --------------------------------------------------------------------------


def loader(args: argparse.Namespace, work: Path) -> dict:
    """Milliseconds a training batch: fetched by the DataLoader, pinned and copied, masked on the device."""
    targs = throughput_args(args, work, compiled=False)
    data = EuroparlDataModule(
        corpus=targs.corpus,
        data_dir=targs.data_dir,
        vocab_size=targs.vocab_size,
        max_sentences=targs.max_sentences,
        seq_len=targs.seq_len,
        batch_size=targs.batch_size,
        mask_prob=0.4,  # base.yaml's
    )
    data.prepare_data()
    data.setup("fit")
    count = 20 if args.smoke else 300
    times = {"fetch": [], "pin_and_copy": [], "mask": []}
    batches = iter(data.train_dataloader())
    for _ in range(count):
        start = time.perf_counter()
        raw = next(batches)
        fetched = time.perf_counter()
        if on_gpu(args):
            raw = {k: v.pin_memory().to(args.device, non_blocking=True) for k, v in raw.items()}
        copied = time.perf_counter()
        mask_tokens(raw["input_ids"], raw["sample_ids"], data.masking("train"), seed=0, epoch=0)
        throughput.sync(args.device)
        for name, seconds in zip(times, (fetched - start, copied - fetched, time.perf_counter() - copied)):
            times[name].append(seconds * 1e3)
    result = {f"{name}_ms": round(statistics.median(values), 3) for name, values in times.items()}
    result["batches"] = count
    return result


# --- throughput and a profile of one step -------------------------------------------------------


def throughput_args(args: argparse.Namespace, work: Path, compiled: bool) -> argparse.Namespace:
    argv = ["--corpus", args.corpus, "--data-dir", str(work / "data"), "--device", args.device]
    argv += ["--precision", "bf16-mixed" if on_gpu(args) else "32-true", "--steps", str(args.steps)]
    # Every one of the 8 batches once before timing, and CUDA graphs' warm-up run and recording.
    # (On a CPU, both compiled models once took a step of 47 and 441 s among the timed ones of
    # throughput.py, after 3 warm-up steps; no recompilation showed at small sizes, cause not found.)
    argv += ["--warmup", "8" if on_gpu(args) else "2"]
    if args.smoke:
        argv += [*SMOKE_SIZES, "--threads", "1", "--compile-backend", "aot_eager"]
    targs = throughput.parse_args(argv + (["--compile"] if compiled else []))
    targs.queued_steps = args.queued_steps
    return targs


def measure_models(args: argparse.Namespace, work: Path) -> dict:
    """Both models, eager then compiled: every figure of :func:`one_mode`, and the ratios of minibert's rate to BERT's."""
    names = list(throughput.MODELS)
    try:
        import transformers  # noqa: F401
    except ImportError:
        names.remove("hf_bert")  # a CPU smoke run without the bench extra
    targs = throughput_args(args, work, compiled=False)
    batches, vocab_size = throughput.masked_batches(targs, count=8)
    results = {"setup": setup_line(targs, vocab_size, batches)}
    for mode in ("eager", "compiled"):
        say(f"throughput, {mode}")
        results[mode] = one_mode(throughput_args(args, work, mode == "compiled"), names, batches, vocab_size)
        if "hf_bert" in names:
            for rate in ("tokens_per_sec", "queued_tokens_per_sec"):
                results[mode][f"speedup_vs_hf ({rate})"] = round(
                    results[mode]["minibert"][rate] / results[mode]["hf_bert"][rate], 2
                )
    if "hf_bert" in names:
        best = {
            name: max(results[mode][name]["queued_tokens_per_sec"] for mode in ("eager", "compiled"))
            for name in names
        }
        results["speedup_vs_hf (best of each, queued)"] = round(best["minibert"] / best["hf_bert"], 2)
    return results


def setup_line(targs: argparse.Namespace, vocab_size: int, batches: list) -> str:
    scored = statistics.mean(float((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    return (
        f"batch {targs.batch_size} x {targs.seq_len} tokens, D {targs.embed_dim}, {targs.num_heads} heads, "
        f"{targs.num_layers} layers, FF {targs.ff_dim}, vocabulary {vocab_size}, {scored:.0f} masked positions "
        f"a batch (throughput.py's 15%), {targs.precision}, fused Adam"
    )


def one_mode(targs: argparse.Namespace, names: list[str], batches: list, vocab_size: int) -> dict:
    """Warm-up and memory of each model alone, then their steps interleaved, then queued, then profiled."""
    steps, results = {}, {}
    for name in names:
        before = gpu_memory(targs.device, reset=True)
        started = time.perf_counter()
        model, step = throughput.MAKERS[name](targs, vocab_size)
        for i in range(targs.warmup):
            step(batches[i % len(batches)], i)
        throughput.sync(targs.device)
        steps[name] = step
        results[name] = {"warmup_s": round(time.perf_counter() - started, 1)}
        if before is not None:
            results[name]["peak_gpu_mib"] = round((torch.cuda.max_memory_allocated() - before) / 2**20)
        if name == "minibert":
            results[name]["step"] = model.static_step.how if targs.compile else "the lesson's, eager"
    times = throughput.timed_interleaved(steps, batches, targs)
    tokens = targs.batch_size * targs.seq_len
    for name in names:
        ms = sorted(t * 1e3 for t in times[name])
        results[name] |= {
            "tokens_per_sec": round(tokens / statistics.median(ms) * 1e3),
            "step_ms": {
                "min": round(ms[0], 3),
                "p10": round(quantile(ms, 0.1), 3),
                "median": round(statistics.median(ms), 3),
                "p90": round(quantile(ms, 0.9), 3),
                "max": round(ms[-1], 3),
            },
            "queued_tokens_per_sec": round(queued_rate(steps[name], batches, targs, tokens)),
        }
        with contextlib.suppress(Exception):  # a profiler that fails costs its figures only
            results[name]["profile"] = profile_step(steps[name], batches, targs.device)
    return results


def quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def gpu_memory(device: str, reset: bool) -> int | None:
    """Bytes allocated on the GPU now (peak statistics reset), or None on a CPU."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def queued_rate(step, batches: list, targs: argparse.Namespace, tokens: int) -> float:
    """Tokens per second of steps issued one after another, waiting for the device only at the end."""
    throughput.sync(targs.device)
    started = time.perf_counter()
    for i in range(targs.queued_steps):
        step(batches[i % len(batches)], i)
    throughput.sync(targs.device)
    return targs.queued_steps * tokens / (time.perf_counter() - started)


def profile_step(step, batches: list, device: str) -> dict:
    """One step under torch.profiler: its kernels, the time they run, and the gaps between them on the GPU."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    throughput.sync(device)
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        started = time.perf_counter()
        step(batches[0], 0)
        throughput.sync(device)
        wall = time.perf_counter() - started
    events = prof.events()
    kernels = sorted(
        (e.time_range.start, e.time_range.end, e.name) for e in events if e.device_type == DeviceType.CUDA
    )
    result = {
        "wall_ms": round(wall * 1e3, 3),
        "cpu_ops": sum(e.device_type == DeviceType.CPU for e in events),
    }
    if not kernels:
        return result | {"kernels": 0}
    busy, end = 0.0, -math.inf  # the union of the kernels' intervals, in microseconds
    for start, stop, _ in kernels:
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
    span = max(stop for _, stop, _ in kernels) - kernels[0][0]
    by_name: dict[str, float] = {}
    for start, stop, name in kernels:
        by_name[name] = by_name.get(name, 0.0) + stop - start
    top = sorted(by_name.items(), key=lambda item: -item[1])[:8]
    return result | {
        "kernels": len(kernels),
        "in_kernels_ms": round(busy / 1e3, 3),
        "gaps_ms": round((span - busy) / 1e3, 3),
        "span_ms": round(span / 1e3, 3),
        "top_kernels_ms": {name[:80]: round(us / 1e3, 3) for name, us in top},
    }


# --- a whole training run ---------------------------------------------------------------------


def fit(args: argparse.Namespace, work: Path, out: Path) -> dict:
    """``python -m minibert fit --config configs/base.yaml`` in ``work/fit``, timed, and what it reached."""
    folder = work / "fit"
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("configs", "benchmarks"):  # the config's relative paths: configs/, benchmarks/*.tsv
        link = folder / name
        if not link.exists():
            link.symlink_to(REPO / name)
    command = [sys.executable, "-m", "minibert", "fit", "--config", "configs/base.yaml"]
    command += ["--data.corpus", str(Path(args.corpus).resolve()), "--data.data_dir", str(work / "data")]
    command += (SMOKE_FIT if args.smoke else []) + args.fit_args.split()
    paths = [str(REPO), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path for path in paths if path)}
    if args.smoke:
        # Compiling for a CPU takes a minute: the static step falls back to eager, as it does where
        # compiling fails, and says so (compiling is checked in the throughput part).
        env["TORCH_COMPILE_DISABLE"] = "1"
        env["OMP_NUM_THREADS"] = (
            "1"  # a small CPU shared with other work: more threads only wait on each other
        )
    log_path = folder / "fit.log"
    say(f"fit: {' '.join(command[2:])} (at most {args.fit_timeout:.0f} s)")
    started = time.time()
    with open(log_path, "w") as log:
        try:
            code = subprocess.run(
                command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=args.fit_timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = time.time() - started
    text = log_path.read_text(errors="replace")
    lines = [
        line.split("\r")[-1] for line in text.splitlines()
    ]  # the progress bar's last redraw of each line
    (out / "fit.log").write_text("\n".join(lines)[-400_000:])
    result = {
        "command": " ".join(command[2:]),
        "wall_s": round(wall, 1),
        "exit_code": code,
        "timed_out": code is None,
        "precision": last_match(r"precision: [^,]*", lines),
        "step": last_match(
            r"minibert's step: static .*", lines
        ),  # the last: a failed compilation says so after
        "log_tail": [line for line in lines if line.strip() and not PROGRESS_BAR.search(line)][-15:],
    }
    tokens_per_step = 16 * 12 if args.smoke else 128 * 20  # SMOKE_FIT's batches, base.yaml's
    result |= logged_figures(folder / "lightning_logs", started, tokens_per_step)
    result |= checkpoint_purity(folder / "checkpoints" / "last.ckpt", args.groups)
    return result


def last_match(pattern: str, lines: list[str]) -> str | None:
    """The last text of ``lines`` that matches ``pattern``."""
    return next((found.group() for line in reversed(lines) if (found := re.search(pattern, line))), None)


def logged_figures(logs: Path, started: float, tokens_per_step: int) -> dict:
    """What the run wrote to TensorBoard: its last validation, its training rate, where its time went."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = sorted(logs.glob("version_*"), key=lambda path: int(path.name.split("_")[1]))
    if not runs:
        return {"logged": "no TensorBoard run"}
    events = EventAccumulator(str(runs[-1]), size_guidance={"scalars": 0}).Reload()
    tags = set(events.Tags()["scalars"])
    last = {
        tag: round(events.Scalars(tag)[-1].value, 4)
        for tag in (
            "val/loss",
            "val/acc",
            "val/top5",
            "val/perplexity",
            "embeddings/purity@5",
            "embeddings/analogies",
        )
        if tag in tags
    }
    result: dict = {"last_validation": last}
    if "val/acc" in tags:
        result["validations"] = len(events.Scalars("val/acc"))
        result["last_validation_step"] = events.Scalars("val/acc")[-1].step
    if "train/loss" in tags:
        train = events.Scalars("train/loss")
        result["last_logged_step"] = train[-1].step
        result["start_to_first_logged_step_s"] = round(train[0].wall_time - started, 1)  # start-up, compile
        result["first_to_last_logged_step_s"] = round(train[-1].wall_time - train[0].wall_time, 1)
    if "train/tokens_per_sec" in tags and "train/loss" in tags:
        rates = [event.value for event in events.Scalars("train/tokens_per_sec")]  # between logged steps
        result["logged_tokens_per_sec_median"] = round(statistics.median(rates))
        # Between the first and last logged steps: the steps at that rate, and the rest (validations, callbacks, saving).
        stepping = (train[-1].step - train[0].step) * tokens_per_step / statistics.median(rates)
        result["outside_steps_s"] = round(result["first_to_last_logged_step_s"] - stepping, 1)
    return result


def checkpoint_purity(path: Path, groups_file: str) -> dict:
    """purity@5 of the checkpoint's word embeddings on ``groups_file``."""
    if not path.exists():
        return {"purity@5": None, "purity_note": f"no {path.name}"}
    from minibert.explore.evaluation import group_of, purity_at_k, read_groups
    from minibert.tokenizer import Vocabulary

    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    vocab = Vocabulary.from_dict(checkpoint["vocabulary"])
    matrix = checkpoint["state_dict"]["encoder.token_embedding.weight"]
    groups = group_of(read_groups(groups_file))
    purity, found = purity_at_k(matrix, vocab.itos, groups, 5, vocab.num_specials)
    value = None if math.isnan(purity) else round(purity, 4)
    return {
        "purity@5": value,
        "purity_groups": f"{Path(groups_file).name}, {found} of {len(groups)} words found",
    }


# --- the report -------------------------------------------------------------------------------


def markdown(results: dict) -> str:
    lines = ["# gpu_check", ""]
    info = results.get("machine", {})
    if info:
        gpu = f"{info.get('gpu', 'no GPU')}, driver {info.get('driver', '?')}, CUDA {info.get('cuda')}"
        lines += [f"{gpu}; torch {info['torch']}, Python {info['python']}; {info['host']}", ""]
    lines += throughput_tables(results.get("throughput", {}))
    lines += fit_table(results.get("fit", {}))
    if "loader" in results:
        loader_ms = results["loader"]
        lines += ["", "loader, ms a batch (median): " + ", ".join(f"{k} {v}" for k, v in loader_ms.items())]
    lines += ["", "| target (one H100) | measured | met |", "| --- | ---: | --- |"]
    for name, (value, target, met) in targets(results).items():
        lines.append(f"| {name} {target} | {value if value is not None else '-'} | {met} |")
    for part, error in results.get("errors", {}).items():
        lines += ["", f"**{part} failed**:", "", "```", error[-1500:], "```"]
    return "\n".join(lines) + "\n"


def throughput_tables(measured: dict) -> list[str]:
    if not measured:
        return []
    lines = [measured.get("setup", ""), ""]
    lines += [
        "| model | mode | tokens/s (median step) | tokens/s (queued) | step ms: min, p10, median, p90, max "
        "| peak GPU MiB | warm-up s |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for mode in ("eager", "compiled"):
        for name, row in measured.get(mode, {}).items():
            if not isinstance(row, dict):
                continue
            ms = ", ".join(str(v) for v in row["step_ms"].values())
            lines.append(
                f"| {name} | {mode} | {row['tokens_per_sec']:,} | {row['queued_tokens_per_sec']:,} | {ms} "
                f"| {row.get('peak_gpu_mib', '-')} | {row['warmup_s']} |"
            )
    ratios = [
        (f"{mode}: {key}", value)
        for mode in ("eager", "compiled")
        for key, value in measured.get(mode, {}).items()
    ]
    ratios = [(key, value) for key, value in ratios if key.split(": ")[1].startswith("speedup")]
    ratios += [(key, value) for key, value in measured.items() if key.startswith("speedup")]
    lines += [""] + [f"- {key} = {value}" for key, value in ratios]
    lines += [
        "",
        "| one step | kernels | in kernels ms | gaps ms | span ms | wall ms |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode in ("eager", "compiled"):
        for name, row in measured.get(mode, {}).items():
            p = row.get("profile") if isinstance(row, dict) else None
            if p:
                cells = [
                    p.get(key, "-") for key in ("kernels", "in_kernels_ms", "gaps_ms", "span_ms", "wall_ms")
                ]
                lines.append(f"| {name} {mode} | " + " | ".join(str(c) for c in cells) + " |")
    return lines + [""]


def fit_table(run: dict) -> list[str]:
    if not run:
        return []
    last = run.get("last_validation", {})
    cells = [
        run.get("wall_s"),
        run.get("exit_code"),
        run.get("last_logged_step"),
        last.get("val/acc"),
        last.get("val/loss"),
        run.get("purity@5"),
        last.get("embeddings/purity@5"),
        run.get("logged_tokens_per_sec_median"),
        run.get("start_to_first_logged_step_s"),
        run.get("first_to_last_logged_step_s"),
        run.get("outside_steps_s"),
    ]
    return [
        f"`{run.get('command', '')}`; {run.get('precision') or ''}; {run.get('step') or ''}",
        "",
        "| wall s | exit | last step | val/acc | val/loss | purity@5 (--groups) | purity@5 (config's groups) "
        "| logged tokens/s (median) | start to first logged step s | first to last logged step s "
        "| of which outside the steps s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| " + " | ".join("-" if c is None else str(c) for c in cells) + " |",
    ]


def targets(results: dict) -> dict:
    """Each target: (measured, the target in words, whether it is met)."""
    measured = results.get("throughput", {})
    compiled = measured.get("compiled", {}).get("minibert", {})
    run = results.get("fit", {})
    values = {
        "training throughput, tokens/s (minibert compiled, queued)": (
            compiled.get("queued_tokens_per_sec"),
            f">= {TARGETS['tokens_per_sec']:,}",
            lambda v: v >= TARGETS["tokens_per_sec"],
        ),
        "whole base.yaml run, s": (
            run.get("wall_s") if run.get("exit_code") == 0 else None,
            f"< {TARGETS['fit_wall_s']}",
            lambda v: v < TARGETS["fit_wall_s"],
        ),
        "speedup_vs_hf (best of each, queued)": (
            measured.get("speedup_vs_hf (best of each, queued)"),
            f">= {TARGETS['speedup_vs_hf']}",
            lambda v: v >= TARGETS["speedup_vs_hf"],
        ),
    }
    return {
        name: (v, words, "-" if v is None else ("yes" if ok(v) else "no"))
        for name, (v, words, ok) in values.items()
    }


def save(results: dict, out: Path) -> None:
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)  # as throughput.py's --threads 1
    warnings.filterwarnings(
        "ignore", message=".*self.log.*"
    )  # steps run by hand, without a Trainer to log to
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_"))
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "args": vars(args), "errors": {}}
    began = time.perf_counter()
    for part in args.parts:
        say(f"{part} ...")
        started = time.perf_counter()
        try:
            if part == "machine":
                results[part] = machine(args)
            elif part == "loader":
                results[part] = loader(args, work)
            elif part == "fit":
                results[part] = fit(args, work, out)
            else:
                results[part] = measure_models(args, work)
        except Exception:  # recorded; the other parts still run
            results["errors"][part] = traceback.format_exc()
            say(f"{part} failed:\n{results['errors'][part]}")
        results.setdefault("seconds", {})[part] = round(time.perf_counter() - started, 1)
        save(results, out)
    results["seconds"]["all"] = round(time.perf_counter() - began, 1)
    save(results, out)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
