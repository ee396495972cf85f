"""Effects of the toggles, with honest uncertainty (scipy throughout).

Each ablation cell is compared with the baseline, paired by seed: the mean difference, a 95%
t-interval over seeds, a paired t-test and Holm's correction across the cells. With fewer than
two pairs there is no interval and no p-value, and the verdict says so.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05


def t_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided t-interval for the mean; (nan, nan) below two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan"), float("nan")
    if np.ptp(values) == 0:  # no spread at all (two identical computations): the interval is the point
        return float(values[0]), float(values[0])
    low, high = stats.t.interval(confidence, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return float(low), float(high)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (nan stays nan and is not counted)."""
    p = np.asarray(p_values, dtype=float)
    valid = np.flatnonzero(~np.isnan(p))
    adjusted = np.full_like(p, np.nan)
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid])]):
        running = max(running, min(1.0, (len(valid) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def summary(runs: pd.DataFrame, metric: str = "fid") -> pd.DataFrame:
    """Per cell: n seeds, mean, 95% t-interval."""
    rows = []
    for cell, group in runs.groupby("cell", sort=False):
        values = group[metric].dropna().to_numpy(float)
        low, high = t_interval(values)
        rows.append({"cell": cell, "n": len(values), "mean": values.mean() if len(values) else np.nan,
                     "ci_low": low, "ci_high": high})
    return pd.DataFrame(rows)


def verdict(n: int, diff: float, p_adj: float, metric: str) -> str:
    if n < 2:
        return f"n={n}: too few seeds to tell"
    if np.isnan(p_adj) or p_adj >= ALPHA:
        return f"no clear effect at n={n} (Holm p={p_adj:.2g})"
    direction = "worse" if diff > 0 else "better"  # lower is better for FID and KID
    return f"{direction}: {metric} {diff:+.3g} (Holm p={p_adj:.2g}, n={n})"


def paired_effects(runs: pd.DataFrame, metric: str = "fid", baseline: str = "baseline") -> pd.DataFrame:
    """Each cell minus the baseline, paired by seed, with CI, raw and Holm-corrected p-values and a verdict.

    The cells' p-values form one Holm family per metric. A cell holding two runs of one seed is refused:
    joined by seed they would pair as a cross product and inflate n.
    """
    refuse_repeated_seeds(runs[runs[metric].notna()])
    base = runs[runs.cell == baseline].set_index("seed")[metric]
    rows = []
    for cell, group in runs[runs.cell != baseline].groupby("cell", sort=False):
        paired = group.set_index("seed")[metric].to_frame("cell").join(base.rename("base"), how="inner").dropna()
        diffs = (paired["cell"] - paired["base"]).to_numpy(float)
        low, high = t_interval(diffs)
        tested = len(diffs) >= 2 and diffs.any()  # all-zero differences: nothing to test (scipy would warn)
        p = stats.ttest_rel(paired["cell"], paired["base"]).pvalue if tested else np.nan
        rows.append({"cell": cell, "metric": metric, "n": len(diffs), "diff": diffs.mean() if len(diffs) else np.nan,
                     "ci_low": low, "ci_high": high, "p": float(p)})
    effects = pd.DataFrame(rows, columns=["cell", "metric", "n", "diff", "ci_low", "ci_high", "p"])
    effects["p_holm"] = holm(effects["p"].tolist())
    effects["verdict"] = [verdict(r.n, r.diff, r.p_holm, metric) for r in effects.itertuples()]
    return effects


def refuse_repeated_seeds(runs: pd.DataFrame) -> None:
    """Raise ValueError naming every cell that holds more than one run of a seed."""
    counts = runs.groupby(["cell", "seed"]).size()
    if len(repeated := counts[counts > 1]):
        listed = "; ".join(f"{cell} seed {seed} ({n} runs)" for (cell, seed), n in repeated.items())
        raise ValueError(f"cells with two runs of one seed cannot be paired by seed: {listed}. Keep one run "
                         "per cell and seed (e.g. report one sweep, or drop the repeated runs)")


def factorial_effects(runs: pd.DataFrame, toggles: list[str], metric: str = "fid") -> pd.DataFrame:
    """Main effects and two-way interactions of a full factorial (flipped: the cell name names the toggle).

    Main effect of A: mean(metric | A flipped) - mean(metric | A not flipped). Interaction of A, B:
    half the difference between A's effect with B flipped and without (the usual 2^k contrast).
    """
    def names(cell: str) -> set[str]:  # 'ema=True+schedule=linear' -> {'ema', 'schedule'}
        return {part.split("=")[0] for part in cell.split("+")}

    flipped = {t: runs.cell.apply(lambda cell, t=t: t in names(cell)) for t in toggles}
    y = runs[metric].astype(float)
    rows = [{"term": t, "effect": y[flipped[t]].mean() - y[~flipped[t]].mean()} for t in toggles]
    for a, b in itertools.combinations(toggles, 2):
        sign = np.where(flipped[a] == flipped[b], 1.0, -1.0)
        rows.append({"term": f"{a} x {b}", "effect": float((sign * y).mean() * 2)})
    return pd.DataFrame(rows)
