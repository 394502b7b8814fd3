"""How the MoE router uses its experts: specialisation by game, load spread, and a usage heat map.

Computed from a game x expert matrix of routing counts C[g, e] (the MoE core keeps one, decayed by
0.99 per update: ``MoEELSTMCore.usage``); with P = C / sum(C):

- ``nmi_game_expert`` = 2 I(G; E) / (H(G) + H(E)), the normalised mutual information between the
  game of a routing slot and the expert it went to (natural logs). 1: every game has experts of its
  own and uses them; 0: routing says nothing about the game (or only one game has been seen, where
  H(G) = 0 and there is nothing to specialise on).
- ``utilization_entropy`` = H(E) / log(E), the entropy of the experts' overall share of the routing
  slots, normalised to [0, 1]: 1 when every expert carries the same load, 0 when one carries all.
"""

from __future__ import annotations

import io

import numpy as np


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def nmi_game_expert(counts: np.ndarray) -> float:
    """Normalised mutual information of a [G, E] count matrix (module docstring); 0 for an empty one."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts / total
    pg, pe = p.sum(1), p.sum(0)
    denom = _entropy(pg) + _entropy(pe)
    if denom <= 0:
        return 0.0
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pg, pe)[nz])).sum())
    return 2.0 * mi / denom


def utilization_entropy(counts: np.ndarray) -> float:
    """H(expert share) / log(E) of a [G, E] count matrix; 0 for an empty one or E = 1."""
    counts = np.asarray(counts, dtype=np.float64)
    total, E = counts.sum(), counts.shape[1]
    if total <= 0 or E < 2:
        return 0.0
    return _entropy(counts.sum(0) / total) / np.log(E)


def usage_png(counts: np.ndarray, games: list[str]) -> bytes:
    """PNG heat map of each game's share of routing slots per expert (rows sum to 1; games on y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(counts, dtype=np.float64)
    share = counts / np.maximum(counts.sum(1, keepdims=True), 1e-12)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.25 * counts.shape[1] + 2.0), 0.5 * len(games) + 1.5), dpi=80)
    image = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=max(share.max(), 1e-12), aspect="auto")
    ax.set_yticks(range(len(games)), games)
    ax.set_xlabel("expert")
    ax.set_title("routing share per game")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
