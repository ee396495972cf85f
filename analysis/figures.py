"""Seaborn figures of a sweep; each function writes one PNG and returns its path."""
from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from analysis.stats import summary  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_by_config(runs: pd.DataFrame, out: Path, metric: str = "fid") -> Path:
    """Mean per config with the same 95% t-interval over seeds as the report's tables, every seed a dot."""
    fig, ax = plt.subplots(figsize=(8, 3.6))
    state = np.random.get_state()
    np.random.seed(0)  # seaborn jitters the dots with numpy's global generator: fixed, the figure's bytes are too
    try:
        sns.stripplot(data=runs, x="cell", y=metric, hue="seed", ax=ax, alpha=0.6, palette="deep")
    finally:
        np.random.set_state(state)
    s = summary(runs, metric).set_index("cell").loc[list(dict.fromkeys(runs.cell))]
    ax.errorbar(range(len(s)), s["mean"], yerr=[s["mean"] - s.ci_low, s.ci_high - s["mean"]], fmt="o",
                color="black", capsize=6)
    ax.set(xlabel="", ylabel=f"{metric.upper()} (lower is better)", title=f"{metric.upper()} per config")
    ax.tick_params(axis="x", rotation=20)
    ax.legend(title="seed", bbox_to_anchor=(1.01, 1), loc="upper left", fontsize="small")  # beside, not over, the dots
    return _save(fig, out / f"{metric}_by_config.png")


def loss_curves(curves: pd.DataFrame, out: Path) -> Path:
    """Training loss per config: mean over seeds with a band."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    sns.lineplot(data=curves, x="step", y="value", hue="cell", errorbar="sd", ax=ax)
    ax.set(ylabel="training loss (MSE on the noise)", yscale="log",
           title="Training loss per config (band: SD over seeds)")
    return _save(fig, out / "loss_curves.png")


def denoising_by_noise_level(levels: pd.DataFrame, out: Path) -> Path:
    """Held-out eps-MSE against log-SNR per config (band: SD over seeds): where in the noise range a toggle acts."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    sns.lineplot(data=levels, x="log_snr", y="value", hue="cell", errorbar="sd", marker="o", ax=ax)
    ax.set(xlabel="log-SNR (noisier to the left)", ylabel="held-out eps-MSE", yscale="log",
           title="Denoising error on held-out digits per noise level")
    return _save(fig, out / "eps_mse_by_log_snr.png")


def sample_grids(grids: dict[str, bytes], out: Path) -> Path:
    """One sample grid per config, side by side (the first seed's)."""
    fig, axes = plt.subplots(1, len(grids), figsize=(2.2 * len(grids), 2.6), squeeze=False)
    for ax, (cell, png) in zip(axes[0], grids.items()):
        ax.imshow(plt.imread(io.BytesIO(png)), cmap="gray")
        ax.set_title(cell, fontsize=9)
        ax.axis("off")
    return _save(fig, out / "sample_grids.png")


def forest(effects: pd.DataFrame, out: Path) -> Path:
    """Effect of each toggle against the baseline, with its 95% interval."""
    fig, ax = plt.subplots(figsize=(6, max(2.4, 1.2 + 0.45 * len(effects))))
    y = range(len(effects))
    ax.errorbar(effects["diff"], y, xerr=[effects["diff"] - effects.ci_low, effects.ci_high - effects["diff"]],
                fmt="o", color="black", capsize=3)
    ax.axvline(0, color="grey", linestyle="--")
    ax.set_yticks(list(y), [f"{c} (n={n})" for c, n in zip(effects.cell, effects.n)])
    ax.set(xlabel=f"{effects.metric.iloc[0].upper()} difference vs baseline (paired by seed)", title="Effects")
    return _save(fig, out / "effects_forest.png")


def speed(runs: pd.DataFrame, out: Path) -> Path:
    """Training throughput and wall time per config (AMP exists for speed)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    sns.barplot(data=runs, x="cell", y="images_per_s", errorbar="sd", ax=axes[0], color="tab:blue")
    sns.barplot(data=runs, x="cell", y="train_s", errorbar="sd", ax=axes[1], color="tab:orange")
    axes[0].set(xlabel="", ylabel="training images/s")
    axes[1].set(xlabel="", ylabel="training wall time (s)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    return _save(fig, out / "speed.png")


def interactions(factorial: pd.DataFrame, out: Path) -> Path:
    """Two-way interaction effects of a full factorial as a heatmap."""
    pairs = factorial[factorial.term.str.contains(" x ")].copy()
    pairs[["a", "b"]] = pairs.term.str.split(" x ", expand=True)
    table = pairs.pivot(index="a", columns="b", values="effect")
    fig, ax = plt.subplots(figsize=(5, 4))
    sns.heatmap(table, annot=True, fmt=".1f", cmap="vlag", center=0, ax=ax)
    ax.set(title="Two-way interactions (FID)", xlabel="", ylabel="")
    return _save(fig, out / "interactions.png")


def embed(path: Path) -> str:
    """An <img> tag carrying the PNG itself, for a self-contained HTML report."""
    return f'<img alt="{path.stem}" src="data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()}">'
