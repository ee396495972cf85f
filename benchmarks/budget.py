"""What a training budget buys: FID of the baseline model at several budgets, or along one run.

    python benchmarks/budget.py --budgets 200x128@1e-4,400x64@1e-4,200x128@1e-3 [--seeds 0] [--out FILE]
    python benchmarks/budget.py --curve 4000,8000,12000,16000,20000 --scale gpu --ema both [--seeds 0] [--out FILE]
        [--set device=cpu n_samples=1000 ...] [--grids DIR] [--checkpoint FILE [--checkpoint-every 500]]
    python benchmarks/budget.py --choose CURVE.json [...] --speedup SUITE.json [...] [--minutes 9] [--runs 18]
    python benchmarks/budget.py --join DIR [DIR ...] --out CURVE.json [--grids DIR]

A budget is ``STEPSxBATCH@LR``. Every budget trains the baseline config (attention on, no EMA,
cosine, the default AMP and memory layout) from the same seed, samples with the `small` scale's
evaluation settings and reports FID, recall and the wall times. This is how the `small` scale's
budget was chosen: the cheapest one whose FID still ranks it clearly above half of itself.

``--curve`` trains one baseline run of ``--scale`` a seed (EMA off, on, or both: one EMA run whose
trained weights are scored too, as they are the EMA-off run's) and evaluates it at each listed step
with that scale's evaluation: FID, classifier score, the smallest and largest class share of the
samples, and the held-out bound and denoising error.
``--set KEY=VALUE ...`` changes the scale's fields (``--set device=cpu`` probes the `gpu` scale's
training on the CPU); ``--grids DIR`` keeps each run's first 64 samples at every probed step;
``--checkpoint FILE`` keeps the run's full checkpoint there, and a later call with the same options and that
file goes on from it, bit for bit, so that a probe too long for one sitting (a CPU's) is made in several.
Nothing in training depends on the total number of steps (constant learning rate, data order and
noise from the run's own generators), so each point is the run of that many steps, bit for bit
(tested). This is the probe that chooses the `gpu` scale's budget. A decaying rate
(``--set lr_schedule=cosine`` or ``cooldown``) does depend on it: there each point is a run of its own
budget, branched from one constant-rate run where the two part (a cosine run after its first update, a
cool-down run at its cool-down, so that a cool-down curve costs little more than its longest run), and a
``--checkpoint`` keeps one point a call. ``--join`` makes one curve of several such calls (each call's
``--out`` ``DIR/curve.json`` and ``--grids DIR``): their rows by step, and their grids side by side.

``--choose`` reads such curves (one per probed learning rate, schedule and set of ``--set`` fields) and a
``benchmarks/suite.py`` result measured on the same GPU, and names the largest probed budget whose baseline
draws digits and whose whole suite is projected to fit in ``--minutes`` with a 15% margin (from several results at
other ``train_steps``, by a line): :mod:`benchmarks.budget_choice` holds the rule, the projection and the pick.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid, save_image

from ablations.plan import parse_updates
from benchmarks.budget_choice import choose_main, scored_with
from benchmarks.budget_sittings import check_curve_points, open_curve_run, resumable_state
from core.arguments import comma_integers, output_file, positive_integers
from core.checkpoint import save_checkpoint
from core.config import SCALES, Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.evaluation import sample_and_evaluate
from core.fidelity import class_share_range
from core.likelihood import heldout_metrics
from core.schedules import shared_updates
from core.seeding import rng_state, set_rng_state
from core.train import train

PROGRESS = sys.stderr.isatty()  # a bar of training steps where someone watches; none in a device call's log


def parse_budget(text: str) -> dict:
    """``"400x64@1e-3"`` -> ``{"train_steps": 400, "batch_size": 64, "lr": 0.001}``."""
    try:
        shape, lr = text.split("@")
        steps, batch = shape.split("x")
        return {"train_steps": int(steps), "batch_size": int(batch), "lr": float(lr)}
    except ValueError:
        raise ValueError(f"invalid budget {text!r}: valid budgets look like STEPSxBATCH@LR, e.g. 400x64@1e-3") from None


def run_budget(budget: dict, seed: int, images: torch.Tensor, **overrides) -> dict:
    config = Config(**budget, seed=seed, **overrides)
    process = DiffusionProcess(config)
    started = time.perf_counter()
    train(process, images)
    wall_s = {"train": time.perf_counter() - started}
    _, metrics = sample_and_evaluate(process, seed, wall_s)
    return budget | {"seed": seed, "fid": metrics["fid"], "recall": metrics["recall"],
                     "train_s": wall_s["train"], "sample_s": wall_s["sample"], "device": str(process.device)}


def evaluate_point(process: DiffusionProcess) -> tuple[dict, torch.Tensor]:
    """The probe's numbers for a process at its current step (its config's sampler and N), and its samples."""
    wall_s = {}
    # Scoring draws from torch's global generator, which dropout trains with: fork it, so that training
    # goes on as if nothing had been evaluated.
    with torch.random.fork_rng(devices=[process.device] if process.device.type == "cuda" else []):
        samples, metrics = sample_and_evaluate(process, process.config.seed, wall_s)
        started = time.perf_counter()
        heldout = heldout_metrics(process, process.config.n_samples)
    low, high = class_share_range(metrics["class_histogram"])
    return {"step": process.step, "ema": process.config.ema, "fid": metrics["fid"], "recall": metrics["recall"],
            "classifier_score": metrics["classifier_score"], "min_class_share": low,
            "max_class_share": high, "nll_bpd": heldout["nll_bpd"], "nll_bpd_se": heldout["nll_bpd_se"],
            "eps_mse": heldout["eps_mse"], "sample_s": wall_s["sample"],
            "heldout_s": time.perf_counter() - started, "scored_with": scored_with(process.config)}, samples


def trained_weights_view(process: DiffusionProcess) -> DiffusionProcess:
    """A process without EMA, to score an EMA run's trained weights (copied in by :func:`sync_view`).

    EMA reads the trained weights and never writes them, so an EMA run's trained weights are the EMA-off
    run's, bit for bit (tested): one run gives both curves. Constructing a process reseeds every global
    generator, which dropout trains with, so their states are put back.
    """
    states = rng_state()
    view = DiffusionProcess(process.config.replace(ema=False))
    set_rng_state(states)
    return view


def sync_view(view: DiffusionProcess, process: DiffusionProcess) -> DiffusionProcess:
    view.model.load_state_dict(process.model.state_dict())  # in place: fast paths keep their buffers
    view.step = process.step
    return view


def learning_curve(config: Config, at_steps: list[int], images: torch.Tensor, log=print,
                   grids: dict[bool, Path] | None = None, on_point=None, trained_too: bool = False,
                   checkpoint: Path | None = None, checkpoint_every: int = 0):
    """Train one run of ``config`` and evaluate it at each of ``at_steps`` (increasing); return (rows, process).
    Under a decaying ``lr_schedule`` each point is a run of its own (:func:`branched_curve`).

    :param grids: by EMA setting, where a PNG of the first 64 samples at each step (8 x 8 each, left to
        right) is written.
    :param on_point: when given, called with the rows so far after each point (a probe cut short keeps them).
    :param trained_too: with EMA on, also score the trained weights at each point: rows with ``ema`` False,
        the EMA-off run's (see :func:`trained_weights_view`).
    :param checkpoint: a file that keeps the run's full checkpoint (every ``checkpoint_every`` steps and after
        each point, with the rows so far). Where it already holds this run, the curve goes on from it, bit for
        bit, and its rows come first (:func:`resumable_state`): a probe longer than one sitting, in several calls.
    """
    check_curve_points(config, at_steps, checkpoint)
    if config.lr_schedule != "constant" and len(at_steps) > 1:
        return branched_curve(config, at_steps, images, PointScorer(grids, on_point, log), trained_too)
    process, train_s, rows = open_curve_run(config, at_steps, checkpoint)
    score = PointScorer(grids, on_point, log, rows)
    views = [trained_weights_view(process), process] if trained_too and config.ema else [process]

    def keep(train_s_now: float) -> None:  # mid-run (train's callback) and after each point
        save_checkpoint(process, checkpoint, extra={"train_s": train_s_now, "rows": rows})

    for steps in at_steps:
        if any(r["step"] == steps for r in rows):  # scored by the call that wrote the checkpoint
            continue
        process.config = process.config.replace(train_steps=steps)  # train() stops at config.train_steps
        started = time.perf_counter()
        train(process, images, checkpoint_every=checkpoint_every, progress=PROGRESS,
              checkpoint=(lambda window: keep(train_s + time.perf_counter() - started)) if checkpoint else None)
        train_s += time.perf_counter() - started
        score(process, views, train_s)
        if checkpoint:
            keep(train_s)
    return rows, process


def branched_curve(config: Config, at_steps: list[int], images: torch.Tensor, score: "PointScorer",
                   trained_too: bool):
    """A curve under a schedule whose rates depend on the budget: each point is a run of that budget of its own.

    Every such run shares its first updates (:func:`core.schedules.shared_updates`: a cosine run its first, a
    cool-down run all but its cool-down) with the constant-rate run of the same config, the trunk, trained once:
    each branches from the trunk there and trains alone to its budget. On the CPU a branch is bit for bit the run
    made from scratch (tested); on CUDA the trunk's rate is a number and a run's own a tensor, so the last bits
    may differ. A point's ``train_s`` is its run's: the trunk's seconds to the branch, then the branch's.
    """
    trunk = DiffusionProcess(config.replace(lr_schedule="constant", train_steps=at_steps[0]))
    trunk_s = 0.0
    for steps in at_steps:
        started = time.perf_counter()
        trunk.config = trunk.config.replace(train_steps=shared_updates(config.lr_schedule, steps))
        train(trunk, images, progress=PROGRESS)
        trunk_s += time.perf_counter() - started
        # taken before the branch is built, which reseeds the global generators (dropout's): the trunk's state
        state = copy.deepcopy(trunk.state_dict())
        branch = DiffusionProcess(config.replace(train_steps=steps))
        branch.load_state_dict(state | {"config": branch.config.to_dict()})
        started = time.perf_counter()
        train(branch, images, progress=PROGRESS)
        views = [trained_weights_view(branch), branch] if trained_too and config.ema else [branch]
        score(branch, views, trunk_s + time.perf_counter() - started)
        set_rng_state(state["global_rng"])  # the trunk goes on as if no branch had been
    return score.rows, branch


class PointScorer:
    """Scores a run at a curve's point (each of its weights), appends the rows, keeps the grids and says so."""

    def __init__(self, grids: dict[bool, Path] | None, on_point, log, rows: list[dict] | None = None):
        """:param rows: the rows scored already (a probe going on from its checkpoint), which new rows follow."""
        self.grids, self.on_point, self.log = grids, on_point, log
        self.rows = [] if rows is None else rows
        self.strips: dict[bool, list[torch.Tensor]] = {}

    def __call__(self, process: DiffusionProcess, views: list[DiffusionProcess], train_s: float) -> None:
        for weights in views:
            row, samples = evaluate_point(weights if weights is process else sync_view(weights, process))
            self.rows.append(row | {"train_s": train_s, "device": str(process.device)})
            strip = self.strips.setdefault(row["ema"], [])
            strip.append(make_grid(samples[:64].float().cpu(), nrow=8, normalize=True, value_range=(-1, 1)))
            if self.grids and row["ema"] in self.grids:
                save_image(torch.cat(strip, dim=2), self.grids[row["ema"]])
            if self.on_point:
                self.on_point(self.rows)
            self.log(f"ema={row['ema']!s:<5} step {row['step']:>6}: FID {row['fid']:8.2f}  classifier score "
                     f"{row['classifier_score']:5.2f}  classes {row['min_class_share']:.1%}-"
                     f"{row['max_class_share']:.1%}  nll {row['nll_bpd']:.3f} bits/dim  train {train_s:6.1f} s")


def join_points(folders: list[Path], grids: Path | None = None) -> list[dict]:
    """One curve of single-point probes (an annealed rate's: one run a budget), each call's ``curve.json`` and
    grids in a folder of its own: their rows in order of step, and each grid name's grids side by side in
    ``grids`` (left to right, as a curve's own strip)."""
    parts = sorted(((json.loads((f / "curve.json").read_text()), f) for f in folders), key=lambda p: p[0][0]["step"])
    if grids:
        grids.mkdir(parents=True, exist_ok=True)
        for name in sorted({png.name for _, folder in parts for png in folder.glob("*.png")}):
            images = [Image.open(folder / name) for _, folder in parts if (folder / name).exists()]
            strip = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)))
            for i, image in enumerate(images):
                strip.paste(image, (sum(j.width for j in images[:i]), 0))
            strip.save(grids / name)
    return [row for rows, _ in parts for row in rows]


def scale_fields(scale: str, words: list[str], lr: float | None) -> dict:
    """The fields of ``scale`` with ``--set`` words (and ``--lr``) applied; an unknown field is refused by name."""
    known = set(Config.__dataclass_fields__) - {"seed", "ema"}  # the probe sets these two itself
    if unknown := sorted({word.split("=", 1)[0] for word in words} - known):
        raise ValueError(f"invalid --set {', '.join(unknown)}: valid fields are {', '.join(sorted(known))}")
    _, updates = parse_updates(words)
    return SCALES[scale] | updates | ({"lr": lr} if lr else {})


def curve_configs(args) -> list[Config]:
    """One baseline config per seed of a ``--curve`` call (``--ema both``: an EMA run whose trained weights are
    scored too); a bad field or value raises ValueError."""
    fields = scale_fields(args.scale, args.set, args.lr)
    # --ema, not the scale's ema (the `gpu` scale's is True), says which weights the probe scores
    configs = [Config(**(fields | {"seed": seed, "ema": args.ema != "off"})) for seed in args.seeds]
    check_curve_points(configs[0], curve_steps(args), args.checkpoint)
    if args.checkpoint_every < 0:
        raise ValueError(f"invalid --checkpoint-every {args.checkpoint_every}: valid values are integers >= 0")
    if args.checkpoint:
        if len(configs) > 1:
            raise ValueError(f"invalid --checkpoint with --seeds {args.seeds}: valid with one seed (one run, one file)")
        resumable_state(args.checkpoint, configs[0], curve_steps(args))
    return configs


def curve_steps(args) -> list[int]:
    return sorted(args.curve)


def curve_main(args, configs: list[Config]) -> list[dict]:
    steps = curve_steps(args)
    if args.grids:
        args.grids.mkdir(parents=True, exist_ok=True)
    images = as_tensor(mnist(train=True))
    rows = []
    for config in configs:
        def labelled(points: list[dict]) -> list[dict]:
            # what was probed: the rate, the seed, and the --set words that changed the scale
            return rows + [row | {"lr": config.lr, "lr_schedule": config.lr_schedule, "seed": config.seed,
                                  "set": args.set} for row in points]

        def save(points: list[dict]) -> None:  # after every point: a probe cut short keeps what it measured
            args.out.write_text(json.dumps(labelled(points), indent=1))

        rate = f"lr{config.lr:g}" + ("" if config.lr_schedule == "constant" else f"-{config.lr_schedule}")
        grids = {ema: args.grids / f"curve-seed{config.seed}-ema-{'on' if ema else 'off'}-{rate}.png"
                 for ema in (False, True)} if args.grids else None
        rows = labelled(learning_curve(config, steps, images, grids=grids, on_point=save if args.out else None,
                                      trained_too=args.ema == "both", checkpoint=args.checkpoint,
                                      checkpoint_every=args.checkpoint_every)[0])
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--budgets", help="comma-separated STEPSxBATCH@LR")
    mode.add_argument("--curve", type=positive_integers("--curve", "4000,8000"), help="steps at which to score")
    mode.add_argument("--choose", type=Path, nargs="+", metavar="CURVE_JSON",
                      help="pick the scale's budget from --curve JSONs (one per probed learning rate)")
    mode.add_argument("--join", type=Path, nargs="+", metavar="DIR",
                      help="one curve of single-point --curve calls, each with its curve.json and grids in DIR")
    parser.add_argument("--speedup", type=Path, nargs="+", metavar="SUITE_JSON",
                        help="--choose: a benchmarks/suite.py result, or several measured alike at other train_steps")
    parser.add_argument("--minutes", type=float, default=9.0, help="--choose: the suite's time budget")
    parser.add_argument("--runs", type=int, default=18, help="--choose: runs in the suite")
    parser.add_argument("--seeds", type=comma_integers("--seeds"), default=[0], help="comma-separated seeds")
    parser.add_argument("--sampler-steps", type=int, default=Config().sampler_steps)
    parser.add_argument("--scale", choices=sorted(SCALES), default="gpu",
                        help="--curve: the scale's baseline; --choose: the scale whose budget it is")
    parser.add_argument("--ema", choices=["off", "on", "both"], default="both",
                        help="--curve: EMA off, on, or both (one EMA run, its trained weights scored too)")
    parser.add_argument("--lr", type=float, help="--curve: another learning rate than the scale's")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="--curve: change the scale's fields")
    parser.add_argument("--grids", type=Path, metavar="DIR", help="--curve: keep each step's first 64 samples here")
    parser.add_argument("--checkpoint", type=Path, metavar="FILE",
                        help="--curve: keep the run's checkpoint here; where it exists, go on from it")
    parser.add_argument("--checkpoint-every", type=int, default=500, metavar="STEPS",
                        help="--curve --checkpoint: steps between checkpoints besides the points'")
    parser.add_argument("--out", type=output_file("--out"), help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.choose and not args.speedup:
        parser.error("invalid --choose without --speedup: valid calls name a benchmarks/suite.py result JSON")
    if args.join and not args.out:
        parser.error("invalid --join without --out: valid calls name the joined curve's JSON")
    if missing := [str(d) for d in args.join or [] if not (d / "curve.json").is_file()]:
        parser.error(f"invalid --join {' '.join(missing)}: no curve.json there; valid folders are those that "
                     "single-point --curve calls wrote (--out DIR/curve.json --grids DIR)")
    try:  # every config is checked before any work starts, and curves or suite results that do not go together
        configs = curve_configs(args) if args.curve else None
        rows = choose_main(args) if args.choose else None
    except ValueError as error:
        parser.error(str(error))
    if not args.choose:
        rows = curve_main(args, configs) if args.curve else join_points(args.join, args.grids) if args.join else \
            budgets_main(args)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


def budgets_main(args) -> list[dict]:
    budgets = [parse_budget(b) for b in args.budgets.split(",")]
    images = as_tensor(mnist(train=True))
    rows = []
    for seed in args.seeds:
        for budget in budgets:
            row = run_budget(budget, seed, images, sampler_steps=args.sampler_steps)
            rows.append(row)
            print(f"{row['train_steps']:>6} x {row['batch_size']:<4} lr {row['lr']:<7g} seed {seed}: "
                  f"FID {row['fid']:8.1f}  recall {row['recall']:.2f}  train {row['train_s']:6.1f} s  "
                  f"sample {row['sample_s']:5.1f} s  ({row['device']})", flush=True)
    return rows


if __name__ == "__main__":
    main()
