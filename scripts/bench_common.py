"""Helpers shared by the bench_*.py scripts."""

import platform

import torch


def machine() -> str:
    """torch version, intra-op threads and CPU, as printed under every benchmark table."""
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}"


def finish_figure(fig, axes, path: str, title: str):
    """Log-log grids, a legend on the first axes, the machine in the title; saved as a PNG at ``path``."""
    for ax in axes:
        ax.set(xscale="log", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
