"""Effects between probes, paired by seed: the report's statistics on the points of `budget.py --curve` JSONs.

    python benchmarks/probe_effects.py CURVE.json [CURVE.json ...] --step 3000 --baseline "constant, EMA on" \
        [--out FILE]

A probe's JSON holds a row per scored point: its step, whether the EMA or the trained weights were scored, and
(in the probes that record them) its seed and rate schedule. The rows at ``--step`` of all the files given are
runs; a row's cell is its schedule and its weights ("cooldown, EMA off"). Every cell is compared with the
baseline cell, paired by seed, as the report compares OFAT cells (:func:`analysis.stats.paired_effects`): the
mean difference, its 95% t-interval over the seeds, a paired t-test, and Holm's correction across the cells of
each metric. Lower is better for FID and the bound, higher for the classifier score. The first probes recorded
no seed or schedule: they ran budget.py's defaults then, seed 0 and the constant rate.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from analysis.stats import paired_effects
from benchmarks.budget_choice import refuse_mixed
from core.arguments import integer_at_least, output_file

METRICS = ("fid", "classifier_score", "nll_bpd")


def cell_name(row: dict) -> str:
    """A probe row's cell: its rate schedule and which weights were scored, e.g. 'cooldown, EMA off'."""
    return f"{row.get('lr_schedule', 'constant')}, EMA {'on' if row['ema'] else 'off'}"


def rows_at(paths: list[Path], step: int) -> list[dict]:
    """The rows at ``step`` of the probes' JSONs, each with the file it came from."""
    return [row | {"file": str(path)} for path in paths for row in json.loads(path.read_text()) if row["step"] == step]


def probe_runs(rows: list[dict]) -> pd.DataFrame:
    """Probe rows as runs, one a row: cell, seed, lr, the file, and :data:`METRICS`."""
    return pd.DataFrame([{"cell": cell_name(row), "seed": row.get("seed", 0), "lr": row["lr"], "file": row["file"],
                          **{metric: row[metric] for metric in METRICS}} for row in rows],
                        columns=["cell", "seed", "lr", "file", *METRICS])


def refusal(runs: pd.DataFrame, paths: list[Path], step: int, baseline: str) -> str | None:
    """Why these runs cannot be compared as asked, naming the bad value and the valid ones; None if they can."""
    if runs.empty:
        steps = sorted({row["step"] for path in paths for row in json.loads(path.read_text())})
        return f"invalid --step {step}: no row of the files is at it; valid values are {', '.join(map(str, steps))}"
    cells = list(dict.fromkeys(runs.cell))
    if baseline not in cells:
        named = ", ".join(map(repr, cells))
        return f"invalid --baseline {baseline!r}: valid values are the cells at step {step}: {named}"
    if runs.lr.nunique() > 1:  # cells are named by schedule and weights only: another rate would pair as the same
        return f"the files' rows at step {step} trained at several rates ({', '.join(map(str, runs.lr.unique()))}); " \
               "valid inputs are probes of one lr"
    return None


def effects(runs: pd.DataFrame, baseline: str) -> pd.DataFrame:
    """Each cell minus the baseline, per metric (one Holm family a metric, as in the report)."""
    table = pd.concat([paired_effects(runs, metric, baseline) for metric in METRICS], ignore_index=True)
    return table.drop(columns="verdict")  # its words read lower as better, which the classifier score is not


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("curves", type=Path, nargs="+", help="budget.py --curve --out JSONs")
    parser.add_argument("--step", type=integer_at_least("--step"), required=True, help="the budget to compare at")
    parser.add_argument("--baseline", required=True, help='the cell to compare with, e.g. "constant, EMA on"')
    parser.add_argument("--out", type=output_file("--out"), help="write the runs and the effects as JSON here")
    args = parser.parse_args(argv)
    if missing := [str(p) for p in args.curves if not p.is_file()]:
        parser.error(f"invalid curves {', '.join(missing)}: valid values are budget.py --curve --out JSON files")
    rows = rows_at(args.curves, args.step)
    runs = probe_runs(rows)
    if why := refusal(runs, args.curves, args.step, args.baseline):
        parser.error(why)
    try:
        refuse_mixed(rows, suite={})  # rows of other devices, or scored with another sampler or N, do not pair
        table = effects(runs, args.baseline)
    except ValueError as exc:  # that, or a cell holding a seed twice (analysis.stats.refuse_repeated_seeds)
        parser.error(str(exc))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(runs.drop(columns="file").to_string(index=False), table.to_string(index=False), sep="\n\n")
    if args.out:
        record = {"step": args.step, "baseline": args.baseline, "runs": runs.to_dict("records"),
                  "effects": table.to_dict("records")}
        args.out.write_text(json.dumps(record, indent=1) + "\n")
    return table


if __name__ == "__main__":
    main()
