"""The DejaVu fonts bundled with matplotlib, located without importing matplotlib and loaded once per process."""

from __future__ import annotations

import functools
import importlib.util
import os

from PIL import ImageFont

DEJAVU_FONTS = (
    "DejaVuSans",
    "DejaVuSans-Bold",
    "DejaVuSans-Oblique",
    "DejaVuSans-BoldOblique",
    "DejaVuSerif",
    "DejaVuSerif-Bold",
    "DejaVuSerif-Italic",
    "DejaVuSerif-BoldItalic",
    "DejaVuSansMono",
    "DejaVuSansMono-Bold",
    "DejaVuSansMono-Oblique",
    "DejaVuSansMono-BoldOblique",
)
"""Font names (file stems in matplotlib's ``mpl-data/fonts/ttf``) used by default."""


@functools.cache
def font_dir() -> str:
    """Directory of matplotlib's bundled TrueType fonts."""
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("synthetic text needs matplotlib installed: its bundled DejaVu fonts are used")
    return os.path.join(spec.submodule_search_locations[0], "mpl-data", "fonts", "ttf")


def font_path(name: str) -> str:
    """Path of font ``name`` (e.g. ``"DejaVuSerif-Bold"``); raises a clear error for an unknown name."""
    path = os.path.join(font_dir(), f"{name}.ttf")
    if not os.path.isfile(path):
        available = sorted(f[:-4] for f in os.listdir(font_dir()) if f.endswith(".ttf"))
        raise ValueError(f"font {name!r} is not bundled with matplotlib; available: {available}")
    return path


@functools.lru_cache(maxsize=512)
def load_font(name: str, size: int) -> ImageFont.FreeTypeFont:
    """The PIL font ``name`` at pixel size ``size`` (cached)."""
    return ImageFont.truetype(font_path(name), size)
