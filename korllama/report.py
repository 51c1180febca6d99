"""Plots and the HTML report. Every figure is a PNG written atomically (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from korllama.io import atomic_path  # noqa: E402


def plot_train_curve(log_history: list[dict], path: str | Path) -> Path:
    """Training loss by step, with the validation macro-F1 on a second axis."""
    loss = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    f1 = [(e["step"], e["eval_macro_f1"]) for e in log_history if "eval_macro_f1" in e]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if loss:
        ax.plot(*zip(*loss), color="tab:blue", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (answer tokens)", color="tab:blue")
    ax.grid(alpha=0.3)
    if f1:
        ax2 = ax.twinx()
        ax2.plot(*zip(*f1), "o-", color="tab:orange", label="validation macro-F1")
        ax2.set_ylabel("validation macro-F1 (rank scoring)", color="tab:orange")
        ax2.set_ylim(0, 1)
    ax.set_title("training curve")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)
