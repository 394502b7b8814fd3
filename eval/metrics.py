r"""Transfer and aggregate metrics of continual runs, in plain numpy.

Conventions shared by every function here:

- Scores are normalised scores (human-normalised for Atari, random/oracle-normalised for memory
  tasks), so 0 is "random" and 1 is "the reference level".
- NaN (or any non-finite value) means "not evaluated" or "the evaluation episode failed". It never
  takes part in an average; a metric that needs a missing value is ``None`` (JSON ``null``), not
  NaN, so that callers can tell "undefined" from a number.
- The stage x game matrix with a before-training row is ``R`` ``[S + 1, G]``: row 0 is the
  evaluation before any training, row ``i`` (``1 <= i <= S``) the evaluation after stage ``i``,
  and stage ``i`` trains ``stage_games[i - 1]`` (the layout of ``eval/forgetting.json``, see
  ``eval/forgetting.py``).

References: Lopez-Paz & Ranzato 2017 (GEM) for zero-shot forward transfer; Wolczyk et al. 2021
(Continual World) for AUC forward transfer; Agarwal et al. 2021 ("Deep RL at the Edge of the
Statistical Precipice", the ``rliable`` library) for IQM and stratified bootstrap intervals; Davison
& Hinkley 1997 (section 3.8) for the two-stage bootstrap of nested data (seeds, then episodes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "auc_forward_transfer",
    "average_performance",
    "first_stages",
    "iqm",
    "stratified_bootstrap_ci",
    "two_level_bootstrap_difference_ci",
    "zero_shot_forward_transfer",
]


def first_stages(stage_games: Sequence[str]) -> dict[str, int]:
    """``{game: i_g}``: the first stage (1-based) that trains each game of ``stage_games`` ``[S]``.

    A game trained again later keeps its first stage; a game never trained is absent.
    """
    first: dict[str, int] = {}
    for i, game in enumerate(stage_games, start=1):
        first.setdefault(game, i)
    return first


def zero_shot_forward_transfer(
    R: ArrayLike, stage_games: Sequence[str], games: Sequence[str]
) -> dict[str, float | None]:
    r"""Zero-shot forward transfer per game: what earlier stages did for a game not yet trained.

    Args:
        R: ``[S + 1, G]`` scores; row 0 before training, row ``i`` after stage ``i``; column ``g``
            is ``games[g]``; NaN where not evaluated.
        stage_games: ``[S]`` the game trained in stage ``i`` is ``stage_games[i - 1]``.
        games: ``[G]`` the column names.

    Returns:
        ``{game: FT_zs}`` for every name in ``games``. With :math:`i_g` the first stage that trains
        ``g`` (a game trained again later keeps its first stage),

        .. math:: \mathrm{FT}_{zs}[g] = R_{i_g - 1,\, g} - R_{0,\, g}, \qquad i_g \ge 2,

        i.e. the score on ``g`` just before its own training minus its score before any training.
        ``None`` when ``g`` is never trained, when :math:`i_g = 1` (no earlier stage, so nothing
        could transfer: the difference would be identically 0), or when either term is NaN.

    Raises:
        ValueError: ``R`` is not ``[len(stage_games) + 1, len(games)]`` or has no stage.
    """
    R = np.asarray(R, dtype=np.float64)
    expected = (len(stage_games) + 1, len(games))
    if R.ndim != 2 or R.shape != expected or len(stage_games) == 0:
        raise ValueError(f"R must be [S + 1, G] = {list(expected)} with S >= 1, got shape {R.shape}")
    first_stage = first_stages(stage_games)
    result: dict[str, float | None] = {}
    for j, game in enumerate(games):
        i = first_stage.get(game)
        if i is None or i < 2:
            result[game] = None
            continue
        before_own, before_all = R[i - 1, j], R[0, j]
        defined = math.isfinite(before_own) and math.isfinite(before_all)
        result[game] = float(before_own - before_all) if defined else None
    return result


def auc_forward_transfer(
    curves: Mapping[str, ArrayLike],
    reference_curves: Mapping[str, ArrayLike],
    fractions: ArrayLike | Mapping[str, ArrayLike] | None = None,
) -> dict[str, float | None]:
    r"""Forward transfer against a single-task reference run, Continual World style.

    For each game, ``curves[game]`` ``[K]`` is the continual run's normalised score on that game
    sampled during the game's own training stage, and ``reference_curves[game]`` ``[K]`` the score
    of a single-task run trained on that game alone from scratch, sampled at the same fractions
    :math:`x_0 < \dots < x_{K-1}` of the stage (``x`` in ``[0, 1]``: 0 = start of the stage, 1 = its
    end). With the trapezoid rule and normalisation by the sampled length of the stage,

    .. math::

        \mathrm{AUC} = \frac{1}{x_{K-1} - x_0} \sum_{k=1}^{K-1}
            (x_k - x_{k-1}) \frac{y_k + y_{k-1}}{2}, \qquad
        \mathrm{FT}[g] = \frac{\mathrm{AUC}_g - \mathrm{AUC}^b_g}{1 - \mathrm{AUC}^b_g}

    (:math:`\mathrm{AUC}^b` is the reference's). With the default fractions the samples span the
    whole stage (``x_0 = 0``, ``x_{K-1} = 1``), so AUC is the mean score over the stage.

    The formula assumes scores normalised to about ``[0, 1]`` (1 = the level the reference can
    reach): then FT is at most 1 (1 = the game was solved from the first step) and negative when
    the continual run learns the game more slowly than a fresh network. HNS above 1 is allowed in
    the curves, but when the reference's AUC is 1 the ratio is undefined, and above 1 its sign
    would flip; both give ``None``.

    Args:
        curves: ``{game: [K_g]}`` the continual run's curves.
        reference_curves: ``{game: [K_g]}`` the single-task runs' curves, same fractions.
        fractions: the sample positions ``[K_g]``, strictly increasing in ``[0, 1]``: one array for
            every game, or ``{game: [K_g]}``; ``None`` means evenly spaced
            ``linspace(0, 1, K_g)``.

    Returns:
        ``{game: FT}`` for every game of ``curves``. NaN points (a failed or missing evaluation) are
        dropped from both curves at that fraction before integrating (so the trapezoid bridges the
        gap, and a dropped end point shortens the normalising span). ``None`` when the game has no
        reference curve, fewer than 2 points remain, or :math:`\mathrm{AUC}^b \ge 1`.

    Raises:
        ValueError: a curve is not 1-D, the two curves of a game differ in length, or the fractions
            do not match the curves or are not strictly increasing in ``[0, 1]``.
    """
    result: dict[str, float | None] = {}
    for game, curve in curves.items():
        y = np.asarray(curve, dtype=np.float64)
        if game not in reference_curves:
            result[game] = None
            continue
        y_ref = np.asarray(reference_curves[game], dtype=np.float64)
        if y.ndim != 1 or y.shape != y_ref.shape:
            raise ValueError(
                f"{game}: the curve and its reference must be 1-D of one length, got shapes "
                f"{y.shape} and {y_ref.shape}"
            )
        x = _fractions_for(game, fractions, y.size)
        keep = np.isfinite(y) & np.isfinite(y_ref)
        if keep.sum() < 2:
            result[game] = None
            continue
        auc = _normalised_auc(x[keep], y[keep])
        auc_ref = _normalised_auc(x[keep], y_ref[keep])
        denominator = 1.0 - auc_ref
        if denominator <= 1e-12:
            result[game] = None
            continue
        result[game] = float((auc - auc_ref) / denominator)
    return result


def average_performance(R: ArrayLike) -> list[float | None]:
    r"""Average performance after each stage: the mean over the games evaluated.

    Args:
        R: ``[S + 1, G]`` (or any ``[rows, G]``) scores, NaN where not evaluated.

    Returns:
        ``[S + 1]``: :math:`A_s = \frac{1}{|E_s|} \sum_{g \in E_s} R_{s,g}` with :math:`E_s` the
        games whose score in row ``s`` is finite; ``None`` for a row with none.

    Raises:
        ValueError: ``R`` is not 2-D.
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2:
        raise ValueError(f"R must be [rows, G], got shape {R.shape}")
    out: list[float | None] = []
    for row in R:
        finite = row[np.isfinite(row)]
        out.append(float(finite.mean()) if finite.size else None)
    return out


def iqm(scores: ArrayLike) -> float:
    r"""Interquartile mean of all finite entries of ``scores`` (any shape, flattened).

    The ``rliable`` definition, ``scipy.stats.trim_mean(x, 0.25, axis=None)``: sort the ``n`` finite
    values :math:`x_{(0)} \le \dots \le x_{(n-1)}`, cut :math:`k = \lfloor n/4 \rfloor` from each
    end, and average the rest:

    .. math:: \mathrm{IQM} = \frac{1}{n - 2k} \sum_{i=k}^{n-k-1} x_{(i)}.

    When ``n`` is not a multiple of 4 this cuts *less* than a quarter (no fractional weights): e.g.
    ``n = 5, 6, 7`` keep the middle 3, 4, 5 values, and ``n <= 3`` keeps everything (the mean).

    Returns:
        The IQM, or NaN when no entry is finite.
    """
    x = np.asarray(scores, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan
    return float(_iqm_rows(x[None, :])[0])


def stratified_bootstrap_ci(
    scores: ArrayLike,
    statistic: Callable[[np.ndarray], float] = iqm,
    reps: int = 2000,
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = 0,
) -> tuple[float, float, float]:
    r"""Point estimate and percentile confidence interval by stratified bootstrap (``rliable``).

    ``scores`` ``[N, G]`` holds one normalised score per run (seed) ``n`` and game ``g``. Each game
    is a stratum: a bootstrap replicate draws, independently for every game, as many runs as that
    game has, with replacement, from that game's own scores; ``statistic`` is applied to all the
    drawn entries flattened into one 1-D array (so every replicate has the same number of entries
    per game as the data). With :math:`\theta^*_1, \dots, \theta^*_B` the ``reps`` replicate
    values, the interval is the percentile interval

    .. math:: [\,q_{\alpha/2}(\theta^*),\; q_{1-\alpha/2}(\theta^*)\,]

    (``numpy.percentile``, linear interpolation) and the point is ``statistic`` of all the data.

    NaN entries (a run that was not evaluated on a game, or failed) are dropped first: game ``g``
    resamples only its ``N_g`` finite scores (``N_g`` draws) and a game with none is left out.

    Args:
        scores: ``[N, G]`` runs x games (a 1-D ``[N]`` is one game).
        statistic: aggregate of a 1-D array of scores; the IQM by default (rliable's aggregate
            IQM is over all run x game entries, as here).
        reps: number of bootstrap replicates ``B``.
        alpha: ``1 - `` the confidence level (0.05: a 95% interval).
        seed: seed or generator for the resampling; a fixed seed gives a reproducible interval.

    Returns:
        ``(point, low, high)`` as floats.

    Raises:
        ValueError: ``scores`` is not 1-D or 2-D, has no finite entry, or ``reps``/``alpha`` are
            out of range.
    """
    data = np.asarray(scores, dtype=np.float64)
    if data.ndim == 1:
        data = data[:, None]
    if data.ndim != 2:
        raise ValueError(f"scores must be [runs, games], got shape {data.shape}")
    if reps < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need reps >= 1 and 0 < alpha < 1, got reps={reps}, alpha={alpha}")
    strata = [col[np.isfinite(col)] for col in data.T]
    strata = [s for s in strata if s.size]
    if not strata:
        raise ValueError("scores has no finite entry to bootstrap")
    rng = np.random.default_rng(seed)
    point = float(statistic(np.concatenate(strata)))
    # [reps, sum_g N_g]: each block of columns is one game resampled within itself.
    replicates = np.concatenate(
        [s[rng.integers(0, s.size, size=(reps, s.size))] for s in strata], axis=1
    )
    if statistic is iqm:
        values = _iqm_rows(replicates)
    else:
        values = np.array([statistic(row) for row in replicates], dtype=np.float64)
    low, high = np.percentile(values, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return point, float(low), float(high)


def two_level_bootstrap_difference_ci(
    after: Sequence[ArrayLike],
    before: Sequence[ArrayLike],
    reps: int = 2000,
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = 0,
) -> tuple[float, float, float]:
    r"""Mean difference of two evaluations over seeds and episodes, with a two-level bootstrap interval.

    Seed ``n`` (``N`` of them) evaluated the same game twice: ``after[n]`` ``[K_n]`` and
    ``before[n]`` ``[J_n]`` are the episodes' scores of the two evaluations (e.g. after the game's
    stage and before training). The point estimate is the mean over seeds of each seed's difference
    of episode means,

    .. math:: \hat\Delta = \frac{1}{N} \sum_{n=1}^{N} \big(\bar a_n - \bar b_n\big).

    A bootstrap replicate resamples at both levels of the nesting: it draws ``N`` seeds with
    replacement, and for each drawn seed (each draw anew, also when a seed is drawn twice) it
    draws ``K_n`` of its ``after`` episodes and, independently, ``J_n`` of its ``before``
    episodes, with replacement; the replicate is :math:`\hat\Delta` of the drawn data. The
    interval is the percentile interval :math:`[q_{\alpha/2}, q_{1-\alpha/2}]` of the ``reps``
    replicates (``numpy.percentile``, linear interpolation), so it covers both the seed-to-seed
    spread and each evaluation's episode noise. With every episode of a cell equal, only the seed
    level varies; with one seed, only the episode level.

    Non-finite episodes (a failed episode) are dropped first; a seed left without an episode in
    either evaluation is left out.

    Args:
        after: ``[N]`` arrays ``[K_n]``: each seed's episode scores of the later evaluation.
        before: ``[N]`` arrays ``[J_n]``: the same seeds' episode scores of the earlier one.
        reps: number of bootstrap replicates ``B``.
        alpha: ``1 - `` the confidence level (0.05: a 95% interval).
        seed: seed or generator for the resampling; a fixed seed gives a reproducible interval.

    Returns:
        ``(point, low, high)`` as floats.

    Raises:
        ValueError: ``after`` and ``before`` differ in length, an entry is not 1-D, no seed has a
            finite episode in both evaluations, or ``reps``/``alpha`` are out of range.
    """
    if len(after) != len(before):
        raise ValueError(f"after and before must hold the same seeds, got {len(after)} and {len(before)}")
    if reps < 1 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need reps >= 1 and 0 < alpha < 1, got reps={reps}, alpha={alpha}")
    cells = [(_finite_1d(a), _finite_1d(b)) for a, b in zip(after, before)]
    cells = [(a, b) for a, b in cells if a.size and b.size]
    if not cells:
        raise ValueError("no seed has a finite episode in both evaluations")
    rng = np.random.default_rng(seed)
    point = float(np.mean([a.mean() - b.mean() for a, b in cells]))
    picks = rng.integers(0, len(cells), size=(reps, len(cells)))  # [B, N]: the seed in each slot
    differences = np.empty(picks.shape)  # [B, N]: the drawn seed's resampled difference
    for n, (a, b) in enumerate(cells):
        slots = picks == n
        draws = int(slots.sum())
        differences[slots] = _resampled_means(a, draws, rng) - _resampled_means(b, draws, rng)
    low, high = np.percentile(differences.mean(axis=1), [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return point, float(low), float(high)


def two_level_bootstrap_mean_ci(
    scores: Sequence[ArrayLike],
    reps: int = 2000,
    alpha: float = 0.05,
    seed: int | np.random.Generator | None = 0,
) -> tuple[float, float, float]:
    r"""Mean over seeds of each seed's episode mean, with the two-level bootstrap interval of
    :func:`two_level_bootstrap_difference_ci` (seeds, then each drawn seed's episodes): that
    function with a ``before`` of a single 0 per seed, which every replicate resamples to 0.

    Args:
        scores: ``[N]`` arrays ``[K_n]``: each seed's episode scores of one evaluation.

    Returns:
        ``(point, low, high)`` as floats.
    """
    return two_level_bootstrap_difference_ci(scores, [np.zeros(1)] * len(scores), reps, alpha, seed)


def _finite_1d(values: ArrayLike) -> np.ndarray:
    """The finite entries of a 1-D array ``[K]`` (ValueError if it is not 1-D)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"episode scores must be 1-D [episodes], got shape {x.shape}")
    return x[np.isfinite(x)]


def _resampled_means(x: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """``[draws]`` means of bootstrap resamples of ``x`` ``[K]`` (``K`` entries each, with replacement)."""
    return x[rng.integers(0, x.size, size=(draws, x.size))].mean(axis=1)


def _iqm_rows(x: np.ndarray) -> np.ndarray:
    """IQM of each row of a finite ``[B, n]`` array (the :func:`iqm` definition), ``[B]``."""
    n = x.shape[1]
    k = n // 4
    return np.sort(x, axis=1)[:, k : n - k].mean(axis=1)


def _normalised_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoid area under ``y`` ``[K]`` over ``x`` ``[K]`` divided by ``x[-1] - x[0]``."""
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0])


def _fractions_for(
    game: str, fractions: ArrayLike | Mapping[str, ArrayLike] | None, size: int
) -> np.ndarray:
    """The sample positions ``[size]`` of ``game``'s curves, checked."""
    if fractions is None:
        return np.linspace(0.0, 1.0, size)
    if isinstance(fractions, Mapping):
        if game not in fractions:
            raise ValueError(f"{game}: no fractions given for its curve")
        raw = fractions[game]
    else:
        raw = fractions
    x = np.asarray(raw, dtype=np.float64)
    if x.shape != (size,):
        raise ValueError(f"{game}: {size} curve points but fractions of shape {x.shape}")
    if size and (np.any(np.diff(x) <= 0) or x[0] < 0.0 or x[-1] > 1.0):
        raise ValueError(f"{game}: fractions must be strictly increasing in [0, 1], got {x.tolist()}")
    return x
