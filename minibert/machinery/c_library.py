"""A C file of this repository, built by the system's C compiler and loaded with ctypes, once per process.

Speed code (``minibert/fused_loss.c``, ``minibert/fast.c``, ``minibert/attention.c``,
``minibert/layer_norm.c``) and one benchmark probe (``benchmarks/core_latency.c``): where there
is no C compiler, or it fails, the caller is told so by a ``None`` and a warning, and computes
the same numbers another way (the probe: reports no figure).
Built in a folder of its own that is removed once the library is loaded, so that nothing is
left behind and two processes never share a half-written file; it takes under a second.
"""

from __future__ import annotations

import ctypes
import logging
import os
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

# The dtypes the C files compute in, and the suffix of each function's name for them.
C_DTYPES = {torch.bfloat16: "bf16", torch.float32: "float"}

# -march=native: built where it runs, for the vector instructions of this CPU. The reordered
# float sums (-fassociative-math and the flags it needs) are what a vector loop computes.
FLAGS = (
    "-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-fassociative-math", "-fno-signed-zeros",
    "-fno-trapping-math", "-ffinite-math-only", "-shared", "-fPIC",
)  # fmt: skip


class CLibrary:
    """The shared library built from ``source``, or None where it cannot be built: :meth:`get`."""

    def __init__(self, source: Path) -> None:
        self.source, self.library, self.tried = source, None, False

    def get(self) -> ctypes.CDLL | None:
        """The loaded library; built on the first call (a warning and None if that fails)."""
        if not self.tried:
            self.tried = True
            self.library = self.build()
        return self.library

    def call(self, function: str, dtype: torch.dtype, *args: object) -> int:
        """Call ``function`` for ``dtype`` (``function_bf16`` or ``function_float``), building the library first.

        A tensor goes as a pointer to its memory (the caller makes it contiguous), None as NULL,
        a ctypes value as it is; the last argument is the number of threads, PyTorch's. Returns
        what the function returns, as an int (meaningless for a void one).
        """
        pointers = [ctypes.c_void_p(a.data_ptr()) if isinstance(a, Tensor) else a for a in args]
        return getattr(self.get(), f"{function}_{C_DTYPES[dtype]}")(
            *pointers, ctypes.c_int(torch.get_num_threads())
        )

    def build(self) -> ctypes.CDLL | None:
        compiler = os.environ.get("CC", "cc")
        with tempfile.TemporaryDirectory(prefix="minibert-") as folder:
            library = Path(folder) / f"{self.source.stem}.so"
            command = [compiler, *FLAGS, str(self.source), "-o", str(library)]
            try:
                subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)
                return ctypes.CDLL(str(library))  # mapped into the process: the file may go
            except (OSError, subprocess.SubprocessError) as error:
                detail = getattr(error, "stderr", None) or str(error)
                reason = (detail.strip().splitlines() or [type(error).__name__])[0]
                log.warning(
                    "%s not built by %s (%s): using the PyTorch version", self.source.name, compiler, reason
                )
                return None


class SwitchedOff:
    """A C library switched off: :meth:`get` gives None, so its caller computes with PyTorch.

    Put in a module's ``c_library`` by the tests and ``benchmarks/levers.py``, to compare both paths.
    """

    def get(self) -> None:
        return None
