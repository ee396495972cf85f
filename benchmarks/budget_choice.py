"""Which `gpu` budget to choose from the probe's curves: the digit rule, the suite's projected time, the pick.

    python benchmarks/budget.py --choose CURVE.json [ANNEAL.json ...] --speedup SUITE.json [...] [--minutes 9]

The probe itself (training and scoring the curves) is :mod:`benchmarks.budget`; this module reads its rows and
a ``benchmarks/suite.py`` result measured on the same GPU. A point draws digits (:func:`draws_digits`) at classifier
score >= 9 with every class 5-15% of the samples. EMA off (the seed's) wins before EMA on, the scale's rate and
schedule before another (:func:`choose`). The projection (:func:`project_suite_s`): a solo run of N steps costs what
the suite benchmark's solo runs cost (start-up, training, sampling, scoring), plus the extra steps at the curve's
time per step (an EMA run's, for an ``--ema both`` curve: a little above the baseline's, so it errs long); the
packed suite costs ``--runs`` of those divided by the measured speed-up. A suite result with phase medians is
projected from its packed runs' own training time a step instead. Two or more results measured alike at different
``train_steps`` (``--speedup A.json B.json``) give a straight line of the packed sweep's wall in its steps, which
holds for any way of packing, fused groups among them (:func:`measured`). A curve probed with other fields of the
scale (``PROBE_SET="batch_size=512"``: its rows' ``set`` words) is a series of its own, whose words the pick names.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from core.config import SCALES, Config


DIGITS = {"classifier_score": 9.0, "min_class_share": 0.05, "max_class_share": 0.15}
MARGIN = 0.85  # of the time budget a projection may use: packed runs with dropout or EMA cost a little more
# what suite results on one line share, all but their train_steps (older results lack mps or fuse: off)
ALIKE = {"device": None, "pack": None, "mps": False, "fuse": False, "runs": None}


def scored_with(config: Config) -> str:
    """How a probe row was scored (its sampler and N): rows scored otherwise do not compare (budget.py records it)."""
    return f"{config.sampler}-{config.sampler_steps} eta {config.sampler_eta:g}, N {config.n_samples}"


def refuse_mixed(curve: list[dict], suite: dict) -> None:
    """Rows probed on other devices, or scored with another sampler or N, cannot share one choice (a CPU probe's
    score at N = 1,000 is not a GPU probe's at 5,000; its step time projects no GPU suite). Rows written before
    ``scored_with`` was recorded are taken as they come."""
    found = {"device": {r["device"].split(":")[0] for r in curve if "device" in r},  # cuda:0 is cuda
             "scored_with": {r["scored_with"] for r in curve if "scored_with" in r}}
    for field, values in found.items():
        if len(values) > 1:
            raise ValueError(f"invalid curve: rows of {field} {', '.join(sorted(values))}; valid curves were probed "
                             "on one device and scored alike (pass one such set of --choose files)")
    timed = suite.get("device")
    if timed and found["device"] and found["device"] != {"cpu" if timed == "cpu" else "cuda"}:
        raise ValueError(f"invalid --speedup: timed on {timed}, where the curve was probed on "
                         f"{', '.join(found['device'])}; valid suite results were measured on the curve's kind of "
                         "device")


def draws_digits(row: dict) -> bool:
    """A probe point whose samples are digits: classifier score >= 9, every class 5-15% of the samples."""
    return (row["classifier_score"] >= DIGITS["classifier_score"]
            and row["min_class_share"] >= DIGITS["min_class_share"]
            and row["max_class_share"] <= DIGITS["max_class_share"])


def project_suite_s(steps: int, curve: list[dict], suite: dict, runs: int = 18) -> float:
    """Projected wall seconds of ``runs`` packed runs of ``steps`` training steps each.

    :param curve: one run's probe rows (increasing steps, cumulative ``train_s``): the time per step.
    :param suite: a ``benchmarks/suite.py`` result: solo seconds a run at its ``train_steps``, and the speed-up.

    Where the result holds the packed runs' phase medians (``phase_medians_s``), the packed sweep is projected
    from them: ``runs / pack`` waves of the measured pack, each longer by the extra steps at the packed runs'
    own training seconds a step. How well training packs, not the whole run's speed-up, then scales with the
    budget: at the suite benchmark's short budget, fixed costs (start-up, scoring) weigh far more. Where it holds
    the solo runs' medians too, a packed step is scaled by :func:`step_ratio` (a larger batch's dearer step);
    that its runs pack as well as the suite's is assumed: a larger batch fills more of the device, so it errs short.
    Where :func:`measured` drew a line through several results, that line, its step scaled likewise, and as many
    times as ``runs`` take more waves of the pack than the measured sweeps did.
    """
    if line := suite.get("line"):
        return line_factor(suite, runs) * (line["intercept_s"] + line["slope_s"] * steps * step_ratio(curve, suite))
    if packed := suite.get("phase_medians_s", {}).get("packed"):
        wave_s = suite["packed_s"] * suite["pack"] / suite["runs"]
        packed_step_s = packed["train"] / suite["train_steps"] * step_ratio(curve, suite)
        return math.ceil(runs / suite["pack"]) * (wave_s - packed["train"] + steps * packed_step_s)
    solo_s = suite["sequential_s"] / suite["runs"] + (steps - suite["train_steps"]) * curve_step_s(curve)
    return runs * solo_s / suite["suite_speedup_vs_sequential"]


def measured(suites: list[dict]) -> dict:
    """The suite result to project from: the longest budget's, with, where two or more results measured alike (the
    same device, pack, MPS, fusion and runs) at different ``train_steps`` are given, the least-squares line of their
    packed wall in their steps (``line``: ``intercept_s`` + ``slope_s`` a step). Training is all that grows with
    the steps, so the line needs no model of how runs pack: it holds for fused groups, whose runs' training is their
    group's and which one result cannot project (refused), and for ``--packed-only`` results, which lack the
    sequential sweep that the other projections need."""
    for field, default in ALIKE.items():
        if len(values := {json.dumps(s.get(field, default)) for s in suites}) > 1:
            raise ValueError(f"invalid suite results: {field} differs ({', '.join(sorted(values))}); valid ones for "
                             "one line are measured alike but for train_steps")
    if len(set(steps := [s["train_steps"] for s in suites])) < len(steps):
        raise ValueError(f"invalid suite results: train_steps {sorted(steps)}; valid ones for one line differ")
    longest = max(suites, key=lambda s: s["train_steps"])
    if len(suites) == 1:
        if longest.get("fuse") or "sequential_s" not in longest:
            raise ValueError(f"invalid suite result alone: {'fused' if longest.get('fuse') else 'packed only'}; "
                             "valid: two or more such results at different train_steps, whose line projects it")
        return longest
    slope, intercept = np.polyfit(steps, [s["packed_s"] for s in suites], 1)
    if slope <= 0:
        raise ValueError(f"invalid suite results: the packed wall does not grow with train_steps {sorted(steps)} "
                         f"({slope:.3g} s a step); valid ones are far enough apart for training to show")
    return longest | {"line": {"intercept_s": float(intercept), "slope_s": float(slope), "train_steps": sorted(steps)}}


def line_factor(suite: dict, runs: int) -> float:
    """How many times the measured sweeps' waves of the pack ``runs`` runs take: 3 for 18 runs from 6, 1 from 18."""
    return math.ceil(runs / suite["pack"]) / math.ceil(suite["runs"] / suite["pack"])


def projection_name(suite: dict, runs: int) -> str:
    """How :func:`project_suite_s` projects from ``suite``, in words, for the printed choice."""
    if "phase_medians_s" not in suite and "line" not in suite:
        speedup, steps = suite["suite_speedup_vs_sequential"], suite["train_steps"]
        return f"the whole runs' speed-up ({speedup:.2f}x) at {steps:,} steps"
    kind = " ".join([f"pack {suite['pack']}"] + ["under MPS"] * bool(suite.get("mps"))
                    + ["fused"] * bool(suite.get("fuse")))
    if line := suite.get("line"):
        steps = ", ".join(f"{s:,}" for s in line["train_steps"])
        return (f"the packed sweeps ({kind}, {suite['runs']} runs) at {steps} steps: {line['intercept_s']:.0f} s + "
                f"{line['slope_s'] * 1000:.2f} s a 1,000 steps, x{line_factor(suite, runs):g} for {runs} runs")
    waves = math.ceil(runs / suite["pack"])
    return f"the packed runs' phase medians ({kind}) at {suite['train_steps']:,} steps; {waves} waves for {runs} runs"


def curve_step_s(curve: list[dict]) -> float:
    """Seconds a training step along one run's probe rows (increasing steps, cumulative ``train_s``)."""
    first, last = curve[0], curve[-1]
    return (last["train_s"] - first["train_s"]) / (last["step"] - first["step"])


def step_ratio(curve: list[dict], suite: dict) -> float:
    """A curve's training step against the suite benchmark's solo one (1 where the suite lacks its medians):
    about 1 for the scale's own fields, more for a larger batch."""
    solo = suite.get("phase_medians_s", {}).get("sequential")
    return curve_step_s(curve) / (solo["train"] / suite["train_steps"]) if solo else 1.0


def steps_to_score(rows: list[dict], score: float = DIGITS["classifier_score"]) -> int | None:
    """The first of one run's probe points (increasing steps) at classifier ``score`` or above; where none is,
    the step at which a straight line through the last two reaches it (an extrapolation), or None where that
    line does not rise."""
    if reached := [r["step"] for r in rows if r["classifier_score"] >= score]:
        return reached[0]
    a, b = rows[-2:]
    rise = (b["classifier_score"] - a["classifier_score"]) / (b["step"] - a["step"])
    return None if rise <= 0 else round(b["step"] + (score - b["classifier_score"]) / rise)


def choose(curve: list[dict], suite: dict, minutes: float = 9.0, runs: int = 18, scale_lr: float = Config.lr,
           scale_schedule: str = Config.lr_schedule) -> dict:
    """The largest probed budget whose baseline draws digits and whose suite fits, and every point's verdict.

    :param curve: probe rows, of one or more series (one per learning rate, rate schedule, EMA setting and the
        other fields a probe set): one run's points, or under an annealed ``lr_schedule`` one run a point (its
        budget).
    :param scale_lr: the scale's own learning rate (default: the seed's), preferred to a probed other one.
    :param scale_schedule: the scale's own ``lr_schedule``, likewise preferred.

    The seed's baseline is kept as far as it can be: EMA off wins wherever one of its budgets qualifies, at the
    scale's rate, schedule and fields first; else an EMA budget does, and the scale's baseline then holds EMA
    (its OFAT cell ``ema=False`` flips it off: ``ablations.record.flipped_value``).
    """
    refuse_mixed(curve, suite)
    # one run per series: its time per step
    if len(seeds := sorted({r.get("seed", 0) for r in curve})) > 1:
        raise ValueError(f"invalid curve: seeds {seeds}; valid curves hold one seed's probe")
    runs_of: dict[tuple, list[dict]] = {}
    for row in sorted(curve, key=lambda r: r["step"]):
        key = (row.get("lr", scale_lr), row.get("lr_schedule", "constant"), row["ema"], probe_words(row))
        runs_of.setdefault(key, []).append(row)
    series = [{"lr": lr, "lr_schedule": schedule, "ema": ema, "set": list(words)}
              for lr, schedule, ema, words in runs_of]
    for key, rows in zip(series, runs_of.values()):
        if len(rows) < 2:
            raise ValueError(f"invalid curve: {len(rows)} points with EMA {'on' if key['ema'] else 'off'} at "
                             f"{series_name(key)}; valid curves have 2 or more for each rate, schedule, EMA "
                             "setting and set of fields")
    points = [key | {"step": r["step"], "draws_digits": draws_digits(r), "classifier_score": r["classifier_score"],
                     "fid": r["fid"], "projected_suite_min": project_suite_s(r["step"], rows, suite, runs) / 60,
                     "step_ratio": step_ratio(rows, suite)}
              for key, rows in zip(series, runs_of.values()) for r in rows]
    fitting = [p for p in points if p["draws_digits"] and p["projected_suite_min"] <= MARGIN * minutes]
    pick = max(fitting, key=lambda p: (not p["ema"], p["lr"] == scale_lr, p["lr_schedule"] == scale_schedule,
                                       not p["set"], p["step"]), default=None)
    reach = [key | {"step": step, "extrapolated": step is not None and step > rows[-1]["step"],
                    "projected_suite_min": step and project_suite_s(step, rows, suite, runs) / 60}
             for key, rows in zip(series, runs_of.values()) for step in [steps_to_score(rows)]]
    return {"train_steps": pick and pick["step"], "lr": pick and pick["lr"], "ema": pick and pick["ema"],
            "lr_schedule": pick and pick["lr_schedule"], "set": pick and pick["set"], "minutes": minutes,
            "runs": runs, "speedup": suite.get("suite_speedup_vs_sequential"), "points": points, "score_reached": reach}


def json_of(path: Path, option: str, writer: str):
    """The JSON in ``path``; ValueError names a path that is missing or holds no JSON."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"invalid {option} {path} ({exc}): valid values are JSON files written by {writer}") from None


def choose_main(args) -> dict:
    curve = [row for path in args.choose for row in json_of(path, "--choose", "`budget.py --curve ... --out`")]
    scale = Config.from_mapping(SCALES[args.scale])
    suite = measured([json_of(path, "--speedup", "`benchmarks/suite.py --out`") for path in args.speedup])
    print(f"projected from {projection_name(suite, args.runs)}")
    choice = choose(curve, suite, args.minutes, args.runs, scale.lr, scale.lr_schedule)
    for p in choice["points"]:
        print(f"{series_name(p):<9} EMA {'on ' if p['ema'] else 'off'} {p['step']:>7} steps: classifier score "
              f"{p['classifier_score']:5.2f}, FID {p['fid']:7.1f}, digits {'yes' if p['draws_digits'] else 'no ':<3}  "
              f"suite ~{p['projected_suite_min']:5.1f} min" + ("" if abs(p["step_ratio"] - 1) < 0.1 else
                                                               f" (a step {p['step_ratio']:.2f}x the suite's)"))
    if choice["train_steps"] is None:
        print(f"-> no probed budget both draws digits and fits {args.runs} runs in {MARGIN:.0%} of {args.minutes} min")
        for r in choice["score_reached"]:  # how far off: what weighs the budget against the rule
            where = "nowhere: its last two points do not rise" if r["step"] is None else (
                f"{'near' if r['extrapolated'] else 'at'} {r['step']:,} steps, "
                f"suite ~{r['projected_suite_min']:.1f} min"
                + (" (a straight line through its last two points)" if r["extrapolated"] else ""))
            print(f"   {series_name(r)} EMA {'on ' if r['ema'] else 'off'}: classifier score "
                  f"{DIGITS['classifier_score']:g} {where}")
        return choice
    words = [f"train_steps={choice['train_steps']}"] + ([f"lr={choice['lr']:g}"] if choice["lr"] != scale.lr else []) \
        + ([f"lr_schedule={choice['lr_schedule']}"] if choice["lr_schedule"] != scale.lr_schedule else []) \
        + choice["set"]
    print(f"-> the {args.scale} scale's budget: {' '.join(words)}" + (
        " ema=True (with EMA off no probed budget both draws digits and fits; the OFAT cell ema=False then flips "
        "EMA off)" if choice["ema"] else ""))
    return choice


def series_name(point: dict) -> str:
    """``lr 0.001`` for a constant rate, ``lr 0.001 cosine`` for an annealed one, ``lr 0.002 batch_size=512`` for
    a probe that set other fields."""
    return " ".join([f"lr {point['lr']:g}"] + ([] if point["lr_schedule"] == "constant" else [point["lr_schedule"]])
                    + point.get("set", []))


def probe_words(row: dict) -> tuple[str, ...]:
    """The fields a probe row's ``--set`` words changed in its scale, but for its rate and rate schedule (series
    keys of their own, from the row's ``lr`` and ``lr_schedule``): ``("batch_size=512",)``, or ``()`` for the
    scale as it is."""
    return tuple(word for word in row.get("set") or [] if word.partition("=")[0] not in ("lr", "lr_schedule"))
