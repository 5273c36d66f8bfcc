"""Figure style shared by the report and the per-trial snapshots: bare matplotlib Figures (no pyplot:
no global state, works in Ray workers and threads, Agg rendering) in one theme, byte-stable files,
and per-arm styles that read in greyscale. (Leaf module.)"""

from __future__ import annotations

import io
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib
from matplotlib.figure import Figure

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">", "p"]
LINESTYLES = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)), (0, (1, 2)), (0, (6, 2, 1, 2))]


@dataclass
class Plot:
    png: Path  # the PDF lies beside it
    caption: str


def arm_styles(labels: Sequence[str]) -> dict[str, dict]:
    """label -> {marker, linestyle, color}: marker and line style differ between any two of 8 arms."""
    import seaborn as sns  # here, not at import: seaborn (and the scipy.stats it loads) costs ~2 s a process

    colors = sns.color_palette("colorblind", max(len(labels), 1))
    return {lb: {"marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
                 "color": colors[i]} for i, lb in enumerate(labels)}


def theme(seaborn: bool = True):
    """The report's matplotlib style: seaborn's whitegrid / paper; ``seaborn=False`` keeps only the
    fixed settings (the per-trial denoising strip, drawn inside a trial process that should not pay
    for importing seaborn)."""
    rc = {"pdf.fonttype": 42, "svg.hashsalt": "bench", "axes.titlesize": 9, "legend.fontsize": 8}
    if seaborn:
        import seaborn as sns

        rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper"), **rc}
    return matplotlib.rc_context(rc)


def figure(nrows: int, ncols: int, w: float, h: float):
    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


PNG_DPI = 150
#: a figure's PNG is an 8-bit palette image of at most this many colours: lines, text and colour maps
#: keep their look at about half the bytes of RGBA (issue 32: the committed figures are most of the tree)
PNG_COLORS = 256


def write_figure(fig: Figure, path: Path) -> Path:
    """``fig`` to ``path`` in the format its suffix names, byte-stable for the same input (no dates);
    a PNG at ``PNG_DPI`` as a palette image (``PNG_COLORS``, median cut, no dithering)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix != ".png":
        fig.savefig(path, metadata=metadata(path))
        return path
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI, metadata={"Software": None})
    buf.seek(0)
    with Image.open(buf) as im:
        palette_png(im).save(path, format="PNG", optimize=True)
    return path


def palette_png(im):
    """A rendered figure (RGB or RGBA, a white background) as a palette image of ``PNG_COLORS`` colours."""
    from PIL import Image

    return im.convert("RGB").quantize(colors=PNG_COLORS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)


def save(fig: Figure, png: Path) -> Path:
    """PNG (``write_figure``) and PDF beside it, both byte-stable for the same input (no dates)."""
    write_figure(fig, png)
    write_figure(fig, png.with_suffix(".pdf"))
    return png


def fig_legend(fig: Figure, axes, **kw) -> None:
    """One legend for the figure, each label once (panels repeat the same arms)."""
    entries: dict[str, object] = {}
    for ax in axes.ravel():
        for h, lb in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(lb, h)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc="outside lower center", **kw)


def wrap(text: str, width: int = 30) -> str:
    return "\n".join(textwrap.wrap(str(text), width)) or str(text)


def safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))


def metadata(path: Path) -> dict:
    return {"CreationDate": None, "Producer": None, "Creator": None} if path.suffix == ".pdf" else {"Software": None}
