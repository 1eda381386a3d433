"""sweep.png: final held-out loss of each source against the mixture (specialisation vs forgetting)."""
from __future__ import annotations

from typing import Any

__all__ = ["plot_sweep"]


def plot_sweep(rows: list[dict], grid_keys: list[str], path: str) -> str:
    """One panel per evaluated source; x = the first grid axis, one line per value of the others."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    sources = sorted({k.split("/")[1] for r in rows for k in r if k.startswith("eval/") and k.endswith("/loss")})
    x_key, rest = grid_keys[0], grid_keys[1:]
    fig, axes = plt.subplots(1, max(len(sources), 1), figsize=(4.2 * max(len(sources), 1), 3.6),
                             squeeze=False)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in rest), []).append(r)
    for ax, source in zip(axes[0], sources):
        for label_values, members in groups.items():
            members = sorted(members, key=lambda r: r[x_key])
            xs = [r[x_key] for r in members]
            ys = [r.get(f"eval/{source}/loss") for r in members]
            label = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(rest, label_values)) or None
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(f"held-out {source}")
        ax.set_xlabel(f"{x_key.rsplit('.', 1)[-1]} weight" if x_key.startswith("data.mixture.") else x_key)
        ax.set_ylabel("final eval loss")
        ax.grid(alpha=0.3)
        if rest:
            ax.legend(fontsize=8)
    fig.suptitle("per-source held-out loss vs the mixture")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
