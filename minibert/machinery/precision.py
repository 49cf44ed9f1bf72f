"""The precision a run trains in when its config names none: bfloat16 where the hardware computes in it.

Under ``bf16-mixed`` the matrix products run in bfloat16 and everything whose sums need the
range or the digits (the softmaxes, the loss, the LayerNorm statistics, the weights and the
optimiser) stays in float32. Where the hardware multiplies bfloat16 natively that is about
twice as fast as float32 (docs/benchmarks.md): GPUs from NVIDIA's Ampere on, and CPUs with
AVX-512 BF16 or AMX (Intel from Cooper Lake and Sapphire Rapids, AMD from Zen 4). Elsewhere
bfloat16 is emulated and slower, so those run in float32 (``32-true``).
"""

from __future__ import annotations

import torch

BF16 = "bf16-mixed"
FP32 = "32-true"


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX), as PyTorch detects it."""
    return getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)() or cpu_has_amx()


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX's matrix tiles (Intel from Sapphire Rapids), as PyTorch detects it."""
    return getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()


def choose_precision(accelerator: object) -> tuple[str, str]:
    """The precision for a run on ``accelerator`` (``trainer.accelerator``: auto, cpu, gpu, ...), and why, in words."""
    name = accelerator if isinstance(accelerator, str) else type(accelerator).__name__.lower()
    on_gpu = name in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if on_gpu:
        gpu = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return BF16, f"the GPU ({gpu}) computes in bfloat16 natively"
        return FP32, f"the GPU ({gpu}) has no native bfloat16"
    if name not in ("auto", "cpu"):
        return FP32, f"float32 is the safe choice on accelerator {name!r}"
    if cpu_has_native_bf16():
        return BF16, "this CPU computes in bfloat16 natively (AVX-512 BF16 or AMX)"
    return FP32, "this CPU has no native bfloat16 (AVX-512 BF16 or AMX), where it would be slower"
