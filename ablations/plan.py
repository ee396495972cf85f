"""Ablation plans: which configurations a sweep runs, and what makes two runs "the same cell".

A cell is a set of flipped toggles ("baseline" flips none); each flips away from the baseline's value
(:func:`ablations.record.flipped_value`). One-factor-at-a-time (``ofat``) is
the baseline plus each toggle flipped alone; ``full`` is every combination. A cell x seed is
identified by :func:`ablations.record.config_hash` of its full :class:`core.config.Config` and
the precision it will compute in here, so a sweep can tell what is already stored whatever command
produced it, and never takes a run of another precision for the same cell.
"""
from __future__ import annotations

import ast
import hashlib
import itertools
import json
from dataclasses import dataclass, field

import torch

from ablations.record import TOGGLES, check_config_keys, config_hash, flipped_value
from core.config import SCALES, Config
from core.diffusion import resolve_device
from core.fused import unfusable_reason
from core.precision import Precision, amp_precision, resolve_precision

PLANS = ("ofat", "full")


def parse_updates(words: list[str]) -> tuple[list[str], dict]:
    """Sacred-style ``with`` words -> (named configs, key=value updates), values parsed as Sacred does."""
    named, updates = [], {}
    for word in words:
        if "=" not in word:
            if word not in SCALES:
                raise ValueError(f"invalid named config {word!r}: valid values are {', '.join(SCALES)}")
            named.append(word)
            continue
        key, raw = word.split("=", 1)
        try:
            updates[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            updates[key] = raw  # a bare word is a string, as on Sacred's command line
    check_config_keys(updates)
    return named, updates


def fields_of(with_words: list[str]) -> tuple[dict, dict]:
    """The fields ``with`` words give a run (its named scales', then its key=value updates), and the updates."""
    named, updates = parse_updates(with_words)
    fields = {}
    for name in named:
        fields |= SCALES[name]
    return fields | updates, updates


@dataclass
class Cell:
    """One configuration x seed of a sweep."""

    name: str
    seed: int
    overrides: dict = field(default_factory=dict)  # the flipped toggles
    config: Config | None = None
    precision: Precision = "fp32"  # what the run will compute in on this machine
    fused: bool = False  # trained as one network with its fused group (sweep.py --fuse)

    @property
    def key(self) -> str:
        return config_hash(self.config, self.precision, self.fused)


def planning_device(config: Config) -> torch.device:
    """The device a run of ``config`` is planned for. An explicit "cuda" names CUDA even where none is
    present: a GPU sweep's cells then have the same keys on the user's CPU machine, where they are
    found stored after a sync (and refused, not run, when they are not)."""
    if str(config.device).startswith("cuda"):
        return torch.device(config.device)
    return resolve_device(config.device)


def planned_precision(config: Config, requested: str = "auto", here: bool = True) -> Precision:
    """The precision a run of ``config`` computes in (a bad request raises ValueError).

    :param here: resolve the device on this machine, which must have it (a run about to start);
        False plans for the config's own device (naming a cell that may have run elsewhere).
    """
    device = resolve_device(config.device) if here else planning_device(config)
    return resolve_precision(config.amp, device, requested)


def key_of(run_config: dict) -> str:
    """The cell key of a run's Sacred config (Config fields and run options, ``precision`` and ``fused`` among them)."""
    config = Config.from_mapping(run_config)
    return config_hash(config, planned_precision(config, run_config.get("precision", "auto"), here=False),
                       bool(run_config.get("fused")))


def cell_name(flipped: dict) -> str:
    """'baseline', or what is flipped, e.g. 'attention=False' or 'ema=True+schedule=linear'."""
    return "+".join(f"{k}={v}" for k, v in flipped.items()) or "baseline"


def cells_of(plan: str, only: list[str] | None = None, baseline: Config | None = None) -> list[tuple[str, dict]]:
    """(cell name, flipped toggles) for a plan, restricted to the toggles in ``only``.

    :param baseline: the sweep's baseline config (default: the seed's); a toggle flips away from its value.
    """
    if plan not in PLANS:
        raise ValueError(f"invalid plan={plan!r}: valid values are {' or '.join(map(repr, PLANS))}")
    toggles = list(TOGGLES) if not only else only
    unknown = [t for t in toggles if t not in TOGGLES]
    if unknown:
        raise ValueError(f"invalid --only toggle(s) {unknown}: valid values are {', '.join(TOGGLES)}")
    flipped = {t: flipped_value(t, baseline or Config()) for t in toggles}
    if plan == "ofat":
        flips = [{}] + [{t: flipped[t]} for t in toggles]
    else:
        flips = [{t: flipped[t] for t, on in zip(toggles, mask) if on}
                 for mask in itertools.product([False, True], repeat=len(toggles))]
    return [(cell_name(f), f) for f in flips]


def build(plan: str, seeds: list[int], with_words: list[str], only: list[str] | None = None,
          fuse: bool = False) -> list[Cell]:
    """Every cell x seed, each with its validated Config (a bad value fails here, before any run).

    :param fuse: mark the cells that can train fused (:func:`core.fused.unfusable_reason`); the others,
        dropout's, train alone.
    """
    base, updates = fields_of(with_words)
    refuse_what_the_sweep_sets(updates)
    cells = []
    for name, overrides in cells_of(plan, only, Config.from_mapping(base)):
        for seed in seeds:
            config = Config.from_mapping(base | overrides | {"seed": seed})
            precision = planned_precision(config, updates.get("precision", "auto"), here=False)
            cells.append(Cell(name, seed, overrides, config, precision, fuse and unfusable_reason(config) is None))
    return cells


# Run options that a sweep sets for each of its runs, with the sweep's option for them: a `with` word setting one
# would be overridden without a word (`with seed=3` ran seed 0).
SET_BY_THE_SWEEP = {"seed": "--seeds", "fused": "--fuse", "sweep_id": None, "cell": None, "resume": None,
                    "resume_checkpoint": None, "fused_checkpoint": None}


def refuse_what_the_sweep_sets(updates: dict) -> None:
    """ValueError naming the first ``with`` update whose key the sweep sets itself (:data:`SET_BY_THE_SWEEP`)."""
    if taken := [key for key in updates if key in SET_BY_THE_SWEEP]:
        key, option = taken[0], SET_BY_THE_SWEEP[taken[0]]
        raise ValueError(f"invalid `with` word {key}={updates[key]!r}: the sweep sets {key} for each run itself"
                         + (f" (give it as {option})" if option else "") + "; valid `with` words are named configs "
                         "and KEY=VALUE updates of the other keys")


def sweep_id(plan: str, only: list[str] | None, with_words: list[str], baseline: Cell) -> str:
    """The same command (seeds aside) on the same kind of machine gives the same sweep id, so rerunning it
    extends the same sweep. Where AMP's precision is not the device's own (fp32 on a CPU without AMX),
    the precision is part of the id, so that runs of two precisions never share a sweep's cells."""
    device_amp = amp_precision(planning_device(baseline.config))
    pinned = [] if not baseline.config.amp or baseline.precision == device_amp else [f"precision={baseline.precision}"]
    words = json.dumps([plan, sorted(only or TOGGLES), sorted(with_words + pinned)])
    return "sw-" + hashlib.sha256(words.encode()).hexdigest()[:10]
