"""A budget probe in several sittings (``benchmarks/budget.py --curve ... --checkpoint FILE``): which curves a
checkpoint can keep, whether a checkpoint is this probe's, and the run a call goes on from."""
from __future__ import annotations

from pathlib import Path

from core.checkpoint import load_state
from core.config import Config
from core.diffusion import DiffusionProcess
from core.schedules import shared_updates


def check_curve_points(config: Config, at_steps: list[int], checkpoint: Path | None = None) -> None:
    """A curve of several points under a decaying ``lr_schedule`` is several runs (:func:`branched_curve`), and a
    checkpoint keeps one run: with ``checkpoint``, one point a call there; else ValueError."""
    if config.lr_schedule == "constant":
        return
    forks = [shared_updates(config.lr_schedule, steps) for steps in at_steps]
    if forks != sorted(forks):  # a trunk only goes forwards (no schedule here does this)
        raise ValueError(f"invalid lr_schedule={config.lr_schedule!r} for --curve {at_steps}: its runs leave the "
                         f"constant-rate run at updates {forks}; valid schedules share more with longer runs")
    if len(at_steps) > 1 and checkpoint:
        raise ValueError(f"invalid --checkpoint with --curve {','.join(map(str, at_steps))} under lr_schedule="
                         f"{config.lr_schedule!r}: its rates depend on the budget, so each point is a run of its own "
                         "and a checkpoint keeps one run; valid is one point a call with --checkpoint, or no "
                         "--checkpoint")


def resumable_state(path: Path, config: Config, at_steps: list[int]) -> dict | None:
    """The checkpoint a curve of ``config`` goes on from, or None where ``path`` does not exist yet.

    It must be this run's (every field but ``train_steps`` equal, and that too under a decaying ``lr_schedule``)
    and must not be past a point it did not score;
    else ValueError, naming what differs.
    """
    if not path.exists():
        return None
    state = load_state(path)
    # through Config, so that a checkpoint from before a field was added holds that field's default
    # under a decaying lr_schedule the budget shapes the run, and the curve's one point is its budget
    budget_free = config.lr_schedule == "constant"
    config = config if budget_free else config.replace(train_steps=at_steps[0])
    stored, wanted = (dict(c.to_dict(), **({"train_steps": None} if budget_free else {}))
                      for c in (Config.from_mapping(state["config"]), config))
    if stored != wanted:
        diff = ", ".join(f"{k}={stored.get(k)!r} (here {v!r})" for k, v in wanted.items() if stored.get(k) != v)
        raise ValueError(f"invalid --checkpoint {path}: another run's ({diff}); valid checkpoints are this "
                         f"probe's, or a new file")
    scored = [r["step"] for r in state.get("extra", {}).get("rows", [])]  # a run's own checkpoint has none
    if missed := [s for s in at_steps if s < state["step"] and s not in scored]:
        raise ValueError(f"invalid --curve points {missed}: {path} is at step {state['step']} already; valid "
                         f"points are {state['step']} or more, or ones it scored ({sorted(set(scored))})")
    return state


def open_curve_run(config: Config, at_steps: list[int], checkpoint: Path | None):
    """The process a curve trains (fresh, or restored from ``checkpoint``), its training seconds so far, and
    the rows already scored."""
    state = resumable_state(checkpoint, config, at_steps) if checkpoint else None
    if state is None:
        return DiffusionProcess(config.replace(train_steps=at_steps[0])), 0.0, []
    process = DiffusionProcess(config.replace(train_steps=state["config"]["train_steps"]))
    process.load_state_dict(state)  # weights, EMA, optimiser and every generator: training goes on exactly
    extra = state.get("extra", {})
    return process, extra.get("train_s", 0.0), list(extra.get("rows", []))
