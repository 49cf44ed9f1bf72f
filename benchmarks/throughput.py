"""Training throughput of minibert against Hugging Face's BertForMaskedLM, same sizes, same batches.

    python benchmarks/throughput.py                      # CPU, base.yaml's step, fp32 then bf16-mixed
    python benchmarks/throughput.py --precision bf16-mixed --threads 2 --steps 30
    python benchmarks/throughput.py --mask-prob 0.15     # BERT's 15% instead of base.yaml's 40%
    python benchmarks/throughput.py --keep-freed-memory  # both models with training's allocator setting
    python benchmarks/throughput.py --device cuda --precision bf16-mixed [--compile]
    python benchmarks/gpu_check.py --out DIR             # all of the GPU's figures in one run

Both models train on the same masked batches of the corpus, one step of each in turn (the
order flips every round) so that whatever else the machine is doing slows both alike. By
default the step is base.yaml's: batch 128 x 20 tokens, 40% of the words masked (all by
``<mask>``), tied embeddings, AdamW and gradient clipping at 1.0, and both models run in the
same precision, each precision in turn. A step is forward + loss + backward + clipping +
optimiser step; minibert's is its LightningModule's own ``training_step`` (metrics included).
The script also prints the peak resident memory of each model's training (in a fresh
process each), the machine, how far apart its first two cores are (a cache line's round trip
between them, before and after the timed steps: ``benchmarks/core_latency.c``), a roofline (one
large ``torch.mm``), minibert's own matrix products timed alone (the part of its step that no
speed code outside them can remove) and a profile of minibert's step. It ends with
``speedup_vs_hf=<ratio>`` for each precision (tokens/s of minibert over BertForMaskedLM's).

Both models run with glibc's allocator as a user has it: BertForMaskedLM's step then faults in
its 240 MB of logits afresh every step, where minibert's keeps its largest block from one step
to the next. ``--keep-freed-memory`` gives both the setting that ``lightning fit`` gives a CPU
run, which makes the peer much faster (docs/benchmarks.md, "The allocator").
Needs the ``bench`` extra: ``pip install -e ".[bench]"``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from minibert.data import EuroparlDataModule
from minibert.machinery.allocator import keep_freed_memory
from minibert.machinery.c_library import CLibrary
from minibert.machinery.denormals import flush_denormals
from minibert.masking import IGNORE_INDEX, mask_tokens
from minibert.module import MiniBert
from minibert.static_step import compile_mode

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CORPUS = "europarl-v7-fr"  # base.yaml's: downloaded into --data-dir on first use
MODELS = ("minibert", "hf_bert")
CORE_LATENCY = CLibrary(Path(__file__).with_name("core_latency.c"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", default=DEFAULT_CORPUS, help="corpus whose vocabulary sizes the models")
    p.add_argument("--data-dir", default=str(REPO / "data"), help="where the encoded corpus is cached")
    p.add_argument("--vocab-size", type=int, default=40_003, help="vocabulary cap, as in configs/base.yaml")
    p.add_argument("--max-sentences", type=int, default=30_000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=20)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--num-heads", type=int, default=8)
    p.add_argument("--num-layers", type=int, default=8)
    p.add_argument("--ff-dim", type=int, default=512)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--mask-prob", type=float, default=0.4, help="share of words scored (base.yaml: 0.4)")
    p.add_argument("--clip", type=float, default=1.0, help="gradient clipping (base.yaml: 1.0; 0: none)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps of each model")
    p.add_argument("--steps", type=int, default=30, help="timed steps of each model")
    p.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="torch.set_num_threads, the same for both",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument(
        "--precision",
        nargs="+",
        default=["32-true", "bf16-mixed"],
        choices=("32-true", "bf16-mixed"),
        help="each precision in turn, both models in the same one",
    )
    p.add_argument(
        "--plain",
        action="store_true",
        help="minibert without minibert/fast.py's speed-ups (model.fast: false)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile both models (minibert: model.compile true, its static-shape step); CUDA graphs on a GPU",
    )
    p.add_argument(
        "--compile-backend", default="inductor", help="torch.compile's backend (aot_eager: a quick check)"
    )
    p.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="both models with the allocator setting of training (minibert/machinery/allocator.py)",
    )
    p.add_argument("--no-subprocess", action="store_true", help="skip the per-model peak-memory runs")
    p.add_argument("--no-profile", action="store_true", help="skip the profile of one minibert step")
    p.add_argument("--only", choices=MODELS, help=argparse.SUPPRESS)  # the peak-memory child runs
    return p.parse_args(argv)


# --- the batches ------------------------------------------------------------------------------


def masked_batches(args: argparse.Namespace, count: int) -> tuple[list[dict[str, torch.Tensor]], int]:
    """``count`` real training batches, masked as training masks them, and the vocabulary size."""
    data = EuroparlDataModule(
        corpus=args.corpus,
        data_dir=args.data_dir,
        vocab_size=args.vocab_size,
        max_sentences=args.max_sentences,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        mask_prob=args.mask_prob,
        mask_token_prob=1.0,  # base.yaml: every chosen word becomes <mask>
        random_token_prob=0.0,
    )
    data.prepare_data()
    data.setup("fit")
    batches = []
    for raw in data.train_dataloader():
        corrupted, labels = mask_tokens(
            raw["input_ids"], raw["sample_ids"], data.masking("train"), seed=0, epoch=0
        )
        batch = {"input_ids": corrupted, "labels": labels, "padding_mask": raw["input_ids"] == 0}
        batches.append({k: v.to(args.device) for k, v in batch.items()})
        if len(batches) == count:
            break
    return batches, len(data.vocab)


# --- the two models, each with a step function --------------------------------------------------


def autocast(args: argparse.Namespace):
    if args.precision[0] == "bf16-mixed":
        return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_minibert(args: argparse.Namespace, vocab_size: int) -> tuple[torch.nn.Module, Callable]:
    module = MiniBert(
        vocab_size=vocab_size,
        seq_len=args.seq_len,
        embed_dim=args.embed_dim,
        num_heads=args.num_heads,
        num_layers=args.num_layers,
        ff_dim=args.ff_dim,
        dropout=args.dropout,
        tie_embeddings=True,  # base.yaml's recipe
        scale_embeddings=True,
        optimizer="adamw",
        lr=args.lr,
        weight_decay=0.01,
        betas=(0.9, 0.98),
        fast=not args.plain,
        compile=args.compile,  # minibert/static_step.py: every position scored, no varying shape to recompile
    ).to(args.device)
    module.static_step.backend = args.compile_backend
    module.train()
    optimizer = module.configure_optimizers()["optimizer"]

    def step(batch: dict[str, torch.Tensor], index: int) -> None:
        with autocast(args):
            loss = module.training_step(batch, index)
        loss.backward()
        if args.clip > 0:  # as base.yaml's trainer asks minibert to (its scaling in the fused step)
            module.configure_gradient_clipping(optimizer, args.clip, "norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return module, step


def minibert_step_in_fit_setting(args: argparse.Namespace) -> tuple[Callable, list[dict[str, torch.Tensor]]]:
    """minibert's step and 8 masked batches, in a process set up as ``lightning fit`` sets up a CPU run.

    PyTorch's threads as ``--threads`` says, denormal numbers flushed, and training's allocator
    setting where ``--keep-freed-memory`` asks for it. For the scripts that time minibert's step
    alone (``benchmarks/levers.py``, ``benchmarks/placement.py``).
    """
    torch.set_num_threads(args.threads)
    flush_denormals()  # as the command line does
    if args.keep_freed_memory:
        keep_freed_memory()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs; no Trainer here
    batches, vocab_size = masked_batches(args, count=8)
    torch.manual_seed(0)
    return make_minibert(args, vocab_size)[1], batches


def parse_step_script_args(
    parser: argparse.ArgumentParser, argv: list[str]
) -> tuple[argparse.Namespace, argparse.Namespace]:
    """A step-timing script's own options (``parser``, given ``--precision`` here) and this script's model and data options.

    For ``benchmarks/levers.py`` and ``benchmarks/placement.py``, which time minibert alone, on a
    CPU, in one precision; ``--help`` prints both sets of options.
    """
    parser.add_argument("--precision", default="bf16-mixed", choices=("32-true", "bf16-mixed"))
    if {"-h", "--help"} & set(argv):
        parser.print_help()
        print("\nand benchmarks/throughput.py's model and data options:")
        parse_args(["--help"])  # prints them and exits
    ours, rest = parser.parse_known_args(argv)
    return ours, parse_args([*rest, "--precision", ours.precision, "--device", "cpu"])


def make_hf_bert(args: argparse.Namespace, vocab_size: int) -> tuple[torch.nn.Module, Callable]:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=args.embed_dim,
        num_attention_heads=args.num_heads,
        num_hidden_layers=args.num_layers,
        intermediate_size=args.ff_dim,
        max_position_embeddings=max(args.seq_len, 32),
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
        pad_token_id=0,
        attn_implementation="sdpa",  # PyTorch's fused attention, as minibert's on a GPU
        tie_word_embeddings=True,
    )
    model = BertForMaskedLM(config).to(args.device)
    model.train()
    # The same optimiser as minibert's configure_optimizers: fused AdamW, weight decay on matrices only.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.98), fused=True)
    # Its loss scores every position: shapes as static as minibert's compiled step, CUDA graphs alike.
    mode = compile_mode(torch.device(args.device).type) if args.compile_backend == "inductor" else None
    forward = torch.compile(model, backend=args.compile_backend, mode=mode) if args.compile else model

    def step(batch: dict[str, torch.Tensor], index: int) -> None:
        if args.compile:  # a step of its own, as minibert's: its CUDA graphs may reuse the last one's memory
            torch.compiler.cudagraph_mark_step_begin()
        with autocast(args):
            # labels are IGNORE_INDEX (-100, the value BertForMaskedLM ignores too) where not masked.
            out = forward(
                input_ids=batch["input_ids"],
                attention_mask=(~batch["padding_mask"]).long(),
                labels=batch["labels"],
            )
        out.loss.backward()
        clip(model.parameters(), args)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return model, step


MAKERS = {"minibert": make_minibert, "hf_bert": make_hf_bert}


def clip(parameters, args: argparse.Namespace) -> None:
    """Gradient clipping as base.yaml's trainer does it (``gradient_clip_val``), for the peer."""
    if args.clip > 0:
        torch.nn.utils.clip_grad_norm_([p for p in parameters if p.grad is not None], args.clip)


# --- measurements -----------------------------------------------------------------------------


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed_interleaved(
    steps: dict[str, Callable], batches: list, args: argparse.Namespace
) -> dict[str, list[float]]:
    """Seconds of every timed step of each model, the models taking turns (order flipped each round)."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        for name in names if i % 2 == 0 else names[::-1]:
            sync(args.device)
            start = time.perf_counter()
            steps[name](batch, i)
            sync(args.device)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
    return times


def step_flops(args: argparse.Namespace, vocab_size: int, scored_rows: float, only_scored: bool) -> float:
    """Multiply-add FLOPs of one training step (forward x 3: backward costs about twice the forward).

    Counts the matrix products only: per layer the fused q/k/v projection, the attention
    scores and weighted sum, the output projection and the two feed-forward layers; then the
    head over the vocabulary. ``only_scored`` (minibert): the last layer's feed-forward and
    the head run on the scored rows only; otherwise (BERT) on every position, and the head
    has a D x D transform before the vocabulary.
    """
    B, T, D, Fd, L = args.batch_size, args.seq_len, args.embed_dim, args.ff_dim, args.num_layers
    tokens = B * T
    attention = 2 * tokens * D * 3 * D + 2 * 2 * tokens * T * D + 2 * tokens * D * D
    ff_per_row = 2 * 2 * D * Fd
    if only_scored:
        layers = L * attention + ((L - 1) * tokens + scored_rows) * ff_per_row
        head = 2 * scored_rows * D * vocab_size
    else:
        layers = L * (attention + tokens * ff_per_row)
        head = 2 * tokens * D * D + 2 * tokens * D * vocab_size
    return 3.0 * (layers + head)


def matmul_peak_gflops(device: str, n: int = 2048, repeats: int = 5) -> float:
    """The machine's fp32 matrix-multiply speed: the best of a few (n x n) @ (n x n) products."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm")
DTYPES = {"c10::BFloat16": torch.bfloat16, "c10::Half": torch.float16, "float": torch.float32}


def products_alone(step: Callable, batches: list, device: str, repeats: int = 10) -> tuple[float, float, int]:
    """The step's own matrix products, each timed alone: seconds and FLOPs a step, and their count.

    One step runs under the profiler, which records every ``torch.mm``, ``addmm`` and ``bmm``
    with its shapes and dtypes; each product is then run again on its own, on fresh contiguous
    operands, after two untimed runs (the median of ``repeats``). Their sum is the time under
    which the step cannot go with these products on this machine; the rest of the step is
    everything else (attention's core, the softmax, LayerNorm, dropout, the optimiser, Python).
    """
    from torch.profiler import profile

    with profile(record_shapes=True) as prof:
        step(batches[0], 0)
    calls: dict[tuple, int] = {}
    for event in prof.events():
        if event.name in PRODUCTS:
            key = (event.name, tuple(map(tuple, event.input_shapes[:3])), tuple(event.input_dtypes[:3]))
            calls[key] = calls.get(key, 0) + 1
    seconds = flops = 0.0
    for (name, shapes, dtypes), count in calls.items():
        operands = [
            torch.randn(shape, device=device, dtype=DTYPES.get(dtype, torch.float32))
            for shape, dtype in zip(shapes, dtypes)
            if shape
        ]
        product = getattr(torch, name.removeprefix("aten::"))
        a, b = operands[-2:]
        times = []
        for i in range(repeats + 2):
            sync(device)
            start = time.perf_counter()
            product(*operands)
            sync(device)
            if i >= 2:
                times.append(time.perf_counter() - start)
        seconds += count * statistics.median(times)
        flops += count * 2 * a.numel() * b.shape[-1]
    return seconds, flops, sum(calls.values())


def peak_rss_mib() -> float:
    """This process's peak resident memory, MiB.

    Linux's VmHWM rather than ``ru_maxrss``: a process started by ``subprocess`` inherits its
    parent's ``ru_maxrss`` across exec, so a small child would report its parent's peak.
    """
    with contextlib.suppress(OSError):
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_child(name: str, argv: list[str]) -> dict[str, float]:
    """Peak resident memory of a fresh process that trains only ``name`` (MiB), and its RSS before the steps."""
    out = subprocess.run(
        [sys.executable, __file__, *argv, "--only", name, "--warmup", "0", "--steps", "3", "--no-profile"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def profile_step(step: Callable, batches: list, rows: int = 12) -> str:
    """The operations one training step spends its time in, by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for i in range(2):
            step(batches[i], i)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def core_round_trip_ns(rounds: int = 100_000) -> float | None:
    """The round trip of a cache line between the first two usable cores, in nanoseconds.

    Tens of nanoseconds where the two cores share an L3 cache, several times that where they do
    not. On a virtual machine the host chooses, and changes it while a benchmark runs: on this
    project's 2-core AMD EPYC guest, base.yaml's step took about 165 ms with its cores 54 to 74 ns
    apart and about 193 ms with them 323 to 364 ns apart (docs/benchmarks.md, "The machine's two
    paces"). None with a single core, or where core_latency.c cannot be built or pinned.
    """
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    library = CORE_LATENCY.get() if len(cores) >= 2 else None
    if library is None:
        return None
    library.core_round_trip_ns.restype = ctypes.c_double
    nanoseconds = library.core_round_trip_ns(cores[0], cores[1], ctypes.c_long(rounds))
    return nanoseconds if nanoseconds > 0 else None


def round_trip() -> str:
    """:func:`core_round_trip_ns` now, as text: "57 ns", or "not measured"."""
    nanoseconds = core_round_trip_ns()
    return "not measured" if nanoseconds is None else f"{nanoseconds:.0f} ns"


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        names = [
            line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{cpu}, {cores} cores usable{gpu}; Python {platform.python_version()}, torch {torch.__version__}"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:  # process-wide: both models
        keep_freed_memory()
    warnings.filterwarnings("ignore", message=".*self.log.*")  # training_step logs; no Trainer here to log to
    batches, vocab_size = masked_batches(args, count=8)
    if args.only:  # a child run measuring one model's peak memory
        measure_peak_memory(args, batches, vocab_size)
        return

    import transformers

    scored = statistics.mean(float((b["labels"] != IGNORE_INDEX).sum()) for b in batches)
    print(f"machine: {machine()}, transformers {transformers.__version__}")
    print(
        f"setup: batch {args.batch_size} x {args.seq_len} tokens, D {args.embed_dim}, {args.num_heads} heads, {args.num_layers} layers, "
        f"FF {args.ff_dim}, vocabulary {vocab_size}, {scored:.0f} scored positions a batch on average "
        f"(mask_prob {args.mask_prob}); device {args.device}, compile {args.compile}, {args.threads} threads, "
        f"{args.warmup} warm-up + {args.steps} timed steps each, interleaved; malloc "
        f"{'keeps freed memory (--keep-freed-memory)' if args.keep_freed_memory else 'as glibc sets it'}"
    )
    print(f"roofline: torch.mm 2048x2048 fp32 {matmul_peak_gflops(args.device):.1f} GFLOP/s")
    speedups = {}
    for precision in args.precision:
        one = argparse.Namespace(**{**vars(args), "precision": [precision]})
        speedups[precision] = compare(one, argv + ["--precision", precision], batches, vocab_size, scored)
    for precision, speedup in speedups.items():
        print(f"speedup_vs_hf={speedup:.2f} ({precision})")


def compare(
    args: argparse.Namespace, argv: list[str], batches: list, vocab_size: int, scored: float
) -> float:
    """Both models' steps in one precision, interleaved: the table, their memory, a profile; minibert's speed-up."""
    torch.manual_seed(0)
    steps = {name: MAKERS[name](args, vocab_size)[1] for name in MODELS}
    before = round_trip()
    times = timed_interleaved(steps, batches, args)
    tokens = args.batch_size * args.seq_len
    print(f"\n## {args.precision[0]}\n")
    print(
        f"a cache line's round trip between the first two cores: {before} before the timed steps, {round_trip()} after\n"
    )
    print("| model | tokens/s (median) | step ms (median) | min..max ms | GFLOP/step | GFLOP/s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    rate = {}
    for name in MODELS:
        median = statistics.median(times[name])
        rate[name] = tokens / median
        flops = step_flops(args, vocab_size, scored, only_scored=name == "minibert" and not args.compile)
        print(
            f"| {name} | {rate[name]:,.0f} | {median * 1e3:.1f} | {min(times[name]) * 1e3:.0f}..{max(times[name]) * 1e3:.0f} "
            f"| {flops / 1e9:.2f} | {flops / median / 1e9:.1f} |"
        )
    print(
        f"\nminibert training steps/s (the data loader's demand): {1 / statistics.median(times['minibert']):.2f}"
    )
    _, step = make_minibert(args, vocab_size)
    for i in range(2):
        step(batches[i % len(batches)], i)
    seconds, flops, count = products_alone(step, batches, args.device)
    median = statistics.median(times["minibert"])
    print(
        f"minibert's matrix products, each timed alone: {count} a step, {flops / 1e9:.1f} GFLOP in "
        f"{seconds * 1e3:.1f} ms ({flops / seconds / 1e9:.0f} GFLOP/s); the rest of its {median * 1e3:.1f} ms "
        f"step: {(median - seconds) * 1e3:.1f} ms"
    )

    if not args.no_subprocess:
        print("\n| model | RSS before steps MiB | peak RSS of training MiB | peak GPU memory MiB |")
        print("| --- | ---: | ---: | ---: |")
        for name in MODELS:
            rss = peak_rss_child(name, argv)
            gpu = f"{rss['gpu_peak_mib']:.0f}" if rss["gpu_peak_mib"] is not None else "-"
            print(f"| {name} | {rss['before_mib']:.0f} | {rss['peak_mib']:.0f} | {gpu} |")

    if not args.no_profile:
        _, step = make_minibert(args, vocab_size)
        for i in range(args.warmup):
            step(batches[i % len(batches)], i)
        print("\nminibert, two training steps, top operations by self CPU time:")
        print(profile_step(step, batches))

    # On a busy machine the medians suffer from the other processes; the fastest steps show
    # what each model does when it has the cores to itself.
    print(
        f"ratio of the fastest steps (less sensitive to other load): {min(times['hf_bert']) / min(times['minibert']):.2f}"
    )
    return rate["minibert"] / rate["hf_bert"]


def measure_peak_memory(args: argparse.Namespace, batches: list, vocab_size: int) -> None:
    """Train ``args.only`` alone for a few steps and print its peak memory as JSON (run in a fresh process)."""
    torch.manual_seed(0)
    _, step = MAKERS[args.only](args, vocab_size)
    before = peak_rss_mib()
    for i in range(args.steps):
        step(batches[i % len(batches)], i)
    peak = peak_rss_mib()
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.device(args.device).type == "cuda" else None
    print(json.dumps({"before_mib": before, "peak_mib": peak, "gpu_peak_mib": gpu}))


if __name__ == "__main__":
    main()
