"""Figure plumbing shared by the studies' plots (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the studies run on machines without a display
import matplotlib.pyplot as plt  # noqa: E402


def panels(count: int, width: float = 5, height: float = 4) -> tuple[Any, Any]:
    """`count` panels side by side (at least one); axes as a 1 x count array."""
    count = max(1, count)
    return plt.subplots(1, count, figsize=(width * count, height), squeeze=False)


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
