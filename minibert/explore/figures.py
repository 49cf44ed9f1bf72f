"""Pictures with matplotlib, an optional extra: asked for by name, saved whole, or drawn into pixels.

A bare ``Figure`` is used everywhere, never pyplot: no window opens and no global state is
kept between pictures, so the commands and the training callbacks can draw side by side.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from minibert.errors import MinibertError
from minibert.machinery.files import atomic_write


def require_matplotlib(what: str = "drawing a picture") -> type:
    """matplotlib's Figure class, or a clear message: it is an optional extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise MinibertError(f'{what} needs matplotlib: pip install -e ".[plot]"') from error
    return Figure


def save_figure(figure, path: str | Path) -> None:
    """Write the figure whole or not at all, as a PNG (or the type its file name ends with)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as file:
        # A file object: matplotlib takes the type from format, not from the name.
        figure.savefig(file, dpi=100, format=path.suffix.removeprefix(".") or "png")


def figure_rgb(figure) -> np.ndarray:
    """The figure drawn into an (height, width, 3) uint8 array, as TensorBoard's Images tab takes it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
