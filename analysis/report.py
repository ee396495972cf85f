"""Regenerate the comparison report from stored runs, with one command.

    python analysis/report.py [-m URL | --dump FILE ...] [--sweep ID ...] [--out DIR]
    python analysis/report.py --dump reports/runs.json --dump reports/gpu/runs.json --out /tmp/scales

Writes DIR/report.md (readable on a code host), DIR/report.html (self-contained: figures
embedded, every string escaped) and DIR/figures/*.png. Only COMPLETED runs count.

Runs of several scales (e.g. `small` on a CPU and `gpu`) are never pooled: each scale gets its own
report in DIR/<scale>/, and DIR/report.md sets each toggle's effect at every scale side by side,
with whether their signs agree and whether their verdicts do (Holm p < 0.05 at each scale, in the same
direction, or at none): does the cheap scale predict the expensive one? Every row there reads
"ablation value minus the seed's value": a scale whose baseline holds the ablation value (EMA on) has the
cell ``ema=False``, whose effect is shown under ``ema=True`` with its sign turned (:func:`oriented`).
"""
from __future__ import annotations

import argparse
import base64
import html
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ablations.record import SAMPLE_GRID, TOGGLES, seed_value
from ablations.store import StoreUnavailable, mongo_option
from analysis import figures, stats
from ablations.sweep_manifest import in_sweeps, member_cell
from analysis.runs import curves_table, from_dump, from_mongo, levels_table, planned_not_stored, runs_table

METRICS = ("fid", "kid_mean", "precision", "recall", "nll_bpd", "eps_mse")
VERDICT_METRICS = ("fid", "nll_bpd", "eps_mse")  # each its own Holm family; lower is better for all three


def _fmt(mean: float, low: float, high: float, n: int) -> str:
    if pd.isna(low):
        return f"{mean:.4g} (n={n})"
    return f"{mean:.4g} ± {(high - low) / 2:.3g} (n={n})"


def tables(runs: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The report's tables: configs x metrics, effects on FID and KID, and factorial terms if any."""
    cells = list(dict.fromkeys(runs.cell))
    wide = pd.DataFrame({"config": cells})
    for metric in recorded(runs, METRICS):
        s = stats.summary(runs, metric).set_index("cell")
        wide[metric] = [_fmt(s.loc[c, "mean"], s.loc[c, "ci_low"], s.loc[c, "ci_high"], s.loc[c, "n"]) for c in cells]
    out = {"configs": wide}
    if "baseline" in cells:
        effects = pd.concat([stats.paired_effects(runs, m) for m in recorded(runs, ("fid", "kid_mean", "nll_bpd",
                                                                                    "eps_mse"))], ignore_index=True)
        for cell, precision in amp_without_effect(runs).items():
            effects.loc[effects.cell == cell, "verdict"] = (f"AMP changes nothing on this device: both cells ran "
                                                            f"in {precision}, so there is no effect to measure")
        out["effects"] = effects.round(4)
    toggles = sorted({p.split("=")[0] for c in cells for p in c.split("+")} - {"baseline"})
    if any("+" in c for c in cells):
        out["factorial"] = stats.factorial_effects(runs, toggles).round(3)
    return out


def recorded(runs: pd.DataFrame, metrics: tuple[str, ...]) -> list[str]:
    """The metrics some run holds (runs from before the held-out metrics have no nll_bpd or eps_mse)."""
    return [m for m in metrics if m in runs and runs[m].notna().any()]


def rank_agreement(runs: pd.DataFrame) -> str | None:
    """Spearman's rank correlation of nll_bpd and FID over the runs holding both, with its n and p."""
    both = runs[["nll_bpd", "fid"]].dropna() if "nll_bpd" in runs else pd.DataFrame()
    if len(both) < 3:
        return None
    rho, p = spearmanr(both.nll_bpd, both.fid)
    return f"Spearman rho = {rho:.2f} over n = {len(both)} runs (p = {p:.2g})"


def amp_without_effect(runs: pd.DataFrame) -> dict[str, str]:
    """Cells that flip ``amp`` alone against the baseline but computed in the same single precision as it
    (fp32 on a CPU without AMX): cell -> that precision. Their "effect" could only be zero."""
    precisions = runs.groupby("cell")["dtype"].unique()
    base = set(precisions.get("baseline", []))
    return {cell: p[0] for cell, p in precisions.items()
            if cell.startswith("amp=") and "+" not in cell and len(base) == 1 and set(p) == base}


def setting(runs: pd.DataFrame) -> dict[str, str]:
    """What stands behind every number: scale, seeds, samples, sampler, classifier, floor, provenance."""
    first = runs.iloc[0]
    sampler = "ancestral-1000" if first.sampler == "ancestral" else f"{first.sampler}-{first.sampler_steps}" + (
        f", eta {first.sampler_eta:g}" if first.sampler_eta else "")
    facts = {
        "scale": ", ".join(sorted(runs.scale.dropna().unique())),
        "runs": f"{len(runs)} COMPLETED runs, {runs.seed.nunique()} seeds, {runs.cell.nunique()} configs",
        "computed in": ", ".join(f"{p} ({runs_counted(n)})" for p, n in runs.dtype.value_counts().sort_index().items()),
        "training": " or ".join(f"{int(n)} steps x {int(b)} images at lr {lr:g}" + ("" if rate == "constant" else
                                f", annealed ({rate})") for n, b, lr, rate in
                                runs[["train_steps", "batch_size", "lr", "lr_schedule"]].drop_duplicates()
                                .itertuples(index=False))
        + " per run" + (f"; {int(runs.fused.sum())} runs trained fused with the other members of their group, as one "
                        "network (sweep.py --fuse)" if "fused" in runs and runs.fused.any() else ""),
        "samples per run": f"{int(first.n_samples)}, sampler {sampler}, against the 10,000 MNIST test digits",
        "real-vs-real FID floor at this N": f"{runs.fid_floor.dropna().mean():.2f}" if runs.fid_floor.notna().any()
        else "not recorded",
        "classifier SHA-256": ", ".join(sorted(runs.classifier_sha256.dropna().unique())),
        "commits": ", ".join(f"{c[:10]}{' (dirty)' if d else ''}" for c, d in
                             runs[["commit", "dirty"]].drop_duplicates().itertuples(index=False)),
        "run ids": ", ".join(str(i) for i in runs.run_id),
    }
    if runs.sweep_id.nunique() > 1:  # e.g. cells a sweep found stored by another sweep, and took as they were
        stored_by = runs.sweep_id.value_counts().items()
        facts["stored by sweeps"] = ", ".join(f"{s} ({runs_counted(n)})" for s, n in stored_by)
    if made := wall_time(runs):
        facts["wall time"] = made
    if agreement := rank_agreement(runs):
        facts["held-out bound against FID"] = agreement  # likelihood and sample quality can disagree
    return facts


def runs_counted(n: int) -> str:
    """'1 run', '2 runs'."""
    return f"{n} run" + ("" if n == 1 else "s")


def wall_time(runs: pd.DataFrame) -> str | None:
    """How long each sweep's invocation (``info.sitting``) took to make its runs here: from its start, start-up
    included, to the last stop of its runs, saying how many resumed training an earlier invocation began (a
    stopped sweep's); None where no run was made by a sweep that recorded its sitting."""
    made = runs[runs.sitting.notna() & runs.stop_time.notna()] if "sitting" in runs else runs.iloc[:0]
    if made.empty:
        return None
    parts = []
    for _, group in made.groupby(made.sitting.map(lambda s: s["id"]), sort=False):
        sitting = group.sitting.iloc[0]
        span = pd.to_datetime(group.stop_time, utc=True).max() - pd.Timestamp(sitting["started"])
        how = [f"packed {sitting['pack']}" + (" under MPS" if sitting.get("mps") else "")] * (sitting["pack"] > 1)
        how += ["fused"] if sitting.get("fuse") else []
        resumed = int(group.resumed.sum()) if "resumed" in group else 0
        before = f"; {resumed} resumed training begun before it, not counted" if resumed else ""
        parts.append(f"{len(group)} runs in {span.total_seconds() / 60:.1f} min on {group.device.iloc[0]} "
                     f"({', '.join([sitting['host'], *how])}; started {sitting['started'][:16]}{before})")
    return "; ".join(parts) + ", each from the sweep's start (start-up included) to its last run's stop"


def make_figures(docs: list[dict], runs: pd.DataFrame, tabs: dict, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [figures.metric_by_config(runs, out, "fid"), figures.loss_curves(curves_table(docs), out),
             figures.speed(runs, out)]
    if len(levels := levels_table(docs)):
        paths.append(figures.denoising_by_noise_level(levels, out))
    grids = {}
    for d in docs:
        cell = member_cell(d)
        if cell not in grids and SAMPLE_GRID in d.get("artifact_data", {}):
            grids[cell] = base64.b64decode(d["artifact_data"][SAMPLE_GRID])
    if grids:
        paths.append(figures.sample_grids(grids, out))
    if "effects" in tabs and tabs["effects"].n.max() > 0:
        paths.append(figures.forest(tabs["effects"][tabs["effects"].metric == "fid"], out))
    if "factorial" in tabs:
        paths.append(figures.interactions(tabs["factorial"], out))
    return paths


def markdown_table(df: pd.DataFrame) -> str:
    cells = [[str(v) for v in row] for row in df.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells])


def verdicts_by_metric(tabs: dict) -> dict[str, pd.DataFrame]:
    """Each verdict metric's rows of the effects table: every verdict rests on one named metric."""
    effects = tabs.get("effects", pd.DataFrame(columns=["metric"]))
    return {m: effects[effects.metric == m] for m in VERDICT_METRICS if (effects.metric == m).any()}


def render(tabs: dict, facts: dict, figs: list[Path], out: Path, title: str) -> None:
    """Write ``report.md`` and the self-contained ``report.html`` into ``out``."""
    verdicts = verdicts_by_metric(tabs)
    (out / "report.md").write_text(markdown(tabs, facts, verdicts, figs, title))
    (out / "report.html").write_text(html_page(tabs, facts, verdicts, figs, title))


def markdown(tabs: dict, facts: dict, verdicts: dict, figs: list[Path], title: str) -> str:
    md = [f"# {title}", "", *[f"- **{k}**: {v}" for k, v in facts.items()], "",
          "## Configs (mean ± half-width of the unadjusted 95% t-interval over seeds; the verdicts are "
          "Holm-corrected)", "", markdown_table(tabs["configs"])]
    for metric, rows in verdicts.items():
        md += ["", f"## Verdicts on {metric} (paired by seed, Holm-corrected across the cells for {metric})", "",
               *[f"- **{r.cell}**: {r.verdict}" for r in rows.itertuples()]]
    if verdicts:
        md += ["", "## Effects against the baseline", "", markdown_table(tabs["effects"])]
    if "factorial" in tabs:
        md += ["", "## Factorial main effects and interactions (FID)", "", markdown_table(tabs["factorial"])]
    return "\n".join(md + ["", "## Figures", "", *[f"![{p.stem}](figures/{p.name})" for p in figs], ""])


def html_page(tabs: dict, facts: dict, verdicts: dict, figs: list[Path], title: str) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1><ul>", *[f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in facts.items()], "</ul>",
            "<h2>Configs</h2>", tabs["configs"].to_html(index=False, escape=True)]
    for metric, rows in verdicts.items():
        body += [f"<h2>Verdicts on {esc(metric)}</h2><ul>",
                 *[f"<li><b>{esc(r.cell)}</b>: {esc(r.verdict)}</li>" for r in rows.itertuples()], "</ul>"]
    if verdicts:
        body += ["<h2>Effects</h2>", tabs["effects"].to_html(index=False, escape=True)]
    if "factorial" in tabs:
        body += ["<h2>Factorial</h2>", tabs["factorial"].to_html(index=False, escape=True)]
    body += ["<h2>Figures</h2>", *[figures.embed(p) for p in figs]]
    style = "body{font-family:sans-serif;max-width:1000px;margin:auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%;display:block;margin:1em 0}"
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def oriented(cell: str) -> tuple[str, int]:
    """A one-toggle cell as the seed's flip names it, and the sign that turns its effect that way. A scale whose
    baseline holds a toggle's ablation value (EMA on) has the cell ``ema=False``: it shows as ``ema=True``
    with its effect negated, so that every scale's row reads "ablation value minus seed value"."""
    toggle, _, value = cell.partition("=")
    if "+" in cell or toggle not in TOGGLES or value != str(seed_value(toggle)):
        return cell, 1
    return f"{toggle}={TOGGLES[toggle]}", -1


def across_scales(effects: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """Per verdict metric: each cell's paired effect at every scale side by side; whether the signs agree, and
    whether the verdicts do (:func:`verdicts_agree`). Either is "-" where fewer than two scales have the cell."""
    out = {}
    for metric in VERDICT_METRICS:
        rows = {}
        for scale, table in effects.items():
            for r in table[table.metric == metric].itertuples():
                name, sign = oriented(r.cell)
                cell = rows.setdefault(name, {"cell": name, "signs": [], "verdicts": {}})
                low, high = sorted((sign * r.ci_low, sign * r.ci_high))
                interval = f" [{low:.3g}, {high:.3g}]" if not pd.isna(r.ci_low) else ""
                turned = f"; {r.cell} against its baseline, sign turned" if sign < 0 else ""
                cell[scale] = f"{sign * r.diff:+.3g}{interval} (n={r.n}, Holm p={r.p_holm:.2g}{turned})"
                cell["signs"].append(np.sign(sign * r.diff))
                cell["verdicts"][scale] = verdict_word(sign * r.diff, r.p_holm)
        for cell in rows.values():
            signs = [s for s in cell.pop("signs") if s != 0 and not pd.isna(s)]
            cell["signs agree"] = "-" if len(signs) < 2 else ("yes" if len(set(signs)) == 1 else "no")
            cell["verdicts agree"] = verdicts_agree(cell.pop("verdicts"))
        if rows:
            columns = ["cell", *effects, "signs agree", "verdicts agree"]
            out[metric] = pd.DataFrame(list(rows.values()), columns=columns).fillna("-")
    return out


def verdict_word(diff: float, p_holm: float) -> str:
    """What a scale's test says of an effect: "lower" or "higher" where its Holm p is below ALPHA, else "none"."""
    if pd.isna(p_holm) or p_holm >= stats.ALPHA:
        return "none"
    return "lower" if diff < 0 else "higher"


def verdicts_agree(words: dict[str, str]) -> str:
    """The scales' verdicts compared: ``yes: lower`` where all say the same, ``no: small none, gpu lower`` where
    they differ. Signs that agree without a verdict anywhere predict nothing; verdicts that agree do."""
    if len(words) < 2:
        return "-"
    if len(set(words.values())) == 1:
        return f"yes: {next(iter(words.values()))}"
    return "no: " + ", ".join(f"{scale} {word}" for scale, word in words.items())


def scales_setting(docs: list[dict], scales: list[str]) -> pd.DataFrame:
    """What stands behind each scale's numbers, a row a scale: an effect that changes sign between two scales
    may come from any of these (training budget and learning rate, sampler, samples, precision)."""
    keys = ("runs", "training", "samples per run", "computed in", "wall time")
    rows = [{"scale": scale} | {k: setting(runs_table([d for d in docs if d["config"].get("scale") == scale]))
                                .get(k, "not recorded") for k in keys} for scale in scales]
    return pd.DataFrame(rows)


def build_scales(docs: list[dict], out: Path, scales: list[str]) -> dict[str, pd.DataFrame]:
    """One report per scale in ``out/<scale>/``, and ``out/report.md``/``.html`` with the effects side by side."""
    effects = {}
    for scale in scales:
        tabs = build([d for d in docs if d["config"].get("scale") == scale], out / scale)
        effects[scale] = tabs.get("effects", pd.DataFrame(columns=["cell", "metric"]))
    side_by_side = {"how the scales differ": scales_setting(docs, scales)} | across_scales(effects)
    title = "MNIST DDPM ablations across scales: " + ", ".join(scales)
    md = [f"# {title}", "", "Effect of each cell against its own scale's baseline (cell minus baseline, paired "
          "by seed; mean [95% t-interval], n, Holm p within that scale). Lower is better for every metric here. "
          f"A scale's verdict is lower or higher where its Holm p < {stats.ALPHA}, else none; \"verdicts agree\" "
          "compares them across the scales. "
          "Each scale's full report: " + ", ".join(f"[{s}]({s}/report.md)" for s in scales) + "."]
    for metric, table in side_by_side.items():
        md += ["", f"## {metric}", "", markdown_table(table)]
    (out / "report.md").write_text("\n".join(md + [""]))
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(md[2])}</p>"]
    for metric, table in side_by_side.items():
        body += [f"<h2>{html.escape(metric)}</h2>", table.to_html(index=False, escape=True)]
    (out / "report.html").write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                                     f"</title></head><body>{''.join(body)}</body></html>")
    return side_by_side


def build(docs: list[dict], out: Path, sweep: str | list[str] | None = None,
          missing: list[dict] | None = None) -> dict[str, pd.DataFrame]:
    """Write the report for the COMPLETED runs of ``docs`` (of the given sweeps, if any) into ``out``; return its
    tables. Runs of more than one scale get :func:`build_scales`.

    :param missing: the cells x seeds the sweeps planned that no COMPLETED run holds (named in the setting).
    """
    sweeps = [sweep] if isinstance(sweep, str) else sweep
    docs = [d for d in docs if d.get("status") == "COMPLETED" and (not sweeps or in_sweeps(d, sweeps))]
    if not docs:
        raise ValueError(f"no COMPLETED runs{' in sweep ' + ', '.join(sweeps) if sweeps else ''}: nothing to report")
    scales = list(dict.fromkeys(d["config"].get("scale") or "custom" for d in docs))
    if len(scales) > 1:
        return build_scales(docs, out, scales)
    runs = runs_table(docs)
    tabs = tables(runs)
    figs = make_figures(docs, runs, tabs, out / "figures")
    facts = setting(runs)
    if missing:  # an unfinished sweep says what its numbers lack
        facts["planned, no COMPLETED run yet"] = ", ".join(f"{e['cell']} seed {e['seed']}" for e in missing)
    render(tabs, facts, figs, out, f"MNIST DDPM ablations{' — sweep ' + ', '.join(sweeps) if sweeps else ''}")
    return tabs


def runs_of(args) -> list[dict]:
    """The run documents the command line names: its dumps, or its sweeps' runs in the database (or all of them)."""
    if args.dump:
        return [doc for dump in args.dump for doc in from_dump(dump)]
    fetched = [doc for sweep in args.sweep or [None] for doc in from_mongo(args.mongo, sweep)]
    ids = [doc["_id"] for doc in fetched]
    return [doc for i, doc in enumerate(fetched) if doc["_id"] not in ids[:i]]  # a run two sweeps share, once


def report_folder(text: str) -> Path:
    """``--out``: a folder, or a path where one can be made; a file, or a path through one, is refused before the
    runs are loaded (a folder that cannot be written is said when the report is written)."""
    path = Path(text)
    if not next(p for p in [path, *path.parents] if p.exists()).is_dir():
        raise argparse.ArgumentTypeError(f"invalid --out {text!r}: a file is in the way; valid values are folders, "
                                         "or paths where one can be made")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python analysis/report.py", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    mongo_option(source)
    source.add_argument("--dump", type=Path, action="append",
                        help="a JSON dump from `python -m analysis.runs export` (repeat it for several)")
    parser.add_argument("--sweep", action="append", help="only this sweep id (repeat it for several)")
    parser.add_argument("--out", type=report_folder, default=Path(__file__).resolve().parent.parent / "reports")
    args = parser.parse_args(argv)
    try:
        missing = [] if args.dump else [e for s in args.sweep or [] for e in planned_not_stored(args.mongo, s)]
        build(runs_of(args), args.out, args.sweep, missing)
    except (ValueError, StoreUnavailable, OSError) as exc:  # OSError: a folder that cannot be written
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
