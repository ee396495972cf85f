"""Train a fused group (:mod:`core.fused`) and leave each member's checkpoint.

    python ablations/fused_group.py --seeds 0,1,2 --out DIR with smoke attention=False threads=2
    python ablations/fused_group.py --seeds 0,1,2 --schedules cosine,linear --out DIR with smoke

``ablations/sweep.py --fuse`` runs this for each group of cells that can be fused, then each member
as a normal ``ablations/run.py`` run with ``fused=True fused_checkpoint=DIR/seed-S-SCHEDULE.pt``: the
run takes its trained state and its loss history from that checkpoint, records the group in
``info.fused`` (its members, its training seconds, its id) and evaluates as any run does.
``analysis/audit.py --reproduce`` re-trains the whole group to re-execute one of its runs.

Ctrl-C or SIGTERM (a stopped sweep's) stops the training between two steps: each member's checkpoint is
written at that step, marked ``partial``, and the process exits with STOPPED_EXIT. The same command
resumes from those checkpoints, to what a group never stopped leaves, bit for bit; ``info.fused.resumed_at``
records where. A run refuses a partial checkpoint.

A group's members are its seeds x ``--schedules`` (default: the config's own schedule), since the
schedule sets only the coefficients that noise a member's batch. EMA never changes training, so
cells that differ only in ``ema`` share one too: with ``--ema-off-twins`` an ``ema=True`` group also
leaves each member's checkpoint as its ``ema=False`` cell would have, bit for bit.
"""
from __future__ import annotations

import argparse
import signal
import sys
import time
import uuid
from pathlib import Path

import torch

from ablations.plan import fields_of
from core.arguments import comma_integers
from core.checkpoint import load_state, save_state, without_ema
from core.config import Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.fused import FusedTraining, train_fused
from core.schedules import SCHEDULES
from core.train import StepBoundarySignals

STOPPED_EXIT = 3  # stopped by Ctrl-C or SIGTERM: every member's checkpoint is left at the step reached


def member_checkpoint(out: Path, seed: int, schedule: str, ema_off_twin: bool = False) -> Path:
    """Where a member's checkpoint goes; ``ema_off_twin``: that of its EMA-off twin (``--ema-off-twins``)."""
    return out / f"seed-{seed}-{schedule}{'-ema-off' if ema_off_twin else ''}.pt"


def members_of(fused: dict, config: Config) -> list[tuple[int, str]]:
    """The (seed, schedule) members of a recorded group (``info.fused``; groups recorded with seeds alone
    were of the config's schedule)."""
    if "members" in fused:
        return [tuple(member) for member in fused["members"]]
    return [(seed, config.schedule) for seed in fused["seeds"]]


def group_config(words: list[str]) -> tuple[Config, dict]:
    """The Config and the run options (``threads``, ``precision``) of a run's ``with`` words, seed aside."""
    fields, updates = fields_of(words)
    return Config.from_mapping(fields), {k: updates[k] for k in ("threads", "precision") if k in updates}


def fresh_members(config: Config, members: list[tuple[int, str]], precision: str = "auto") -> list[DiffusionProcess]:
    """The (seed, schedule) ``members`` of ``config`` as fresh processes."""
    return [DiffusionProcess(config.replace(seed=s, schedule=sch), precision=precision) for s, sch in members]


def train_members(members: list[DiffusionProcess], log=None, windows: list[list[float]] | None = None) -> float:
    """Train ``members`` together up to their budget (see :func:`core.fused.train_fused`); the seconds it took."""
    started = time.perf_counter()
    train_fused(*set_up(members), log=log, windows=windows)
    if members[0].device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def set_up(members: list[DiffusionProcess]) -> tuple[FusedTraining, torch.Tensor]:
    """The group and the training images, with Ctrl-C and SIGTERM held until both are made, then raised (before any
    step). Raised where it lands, a stop could fall in one of the imports their first use makes, whose callbacks
    print an exception and go on: the stop was lost and the group trained to its end 4 times in 75 stops sent
    during the set-up with the CPU busy (tests/test_fused_sweep.py failed once so)."""
    with StepBoundarySignals() as held:
        made = FusedTraining(members), as_tensor(mnist(train=True))
        held.check()
    return made


def trained_group(config: Config, members: list[tuple[int, str]], precision: str = "auto",
                  log=None) -> tuple[list, float]:
    """The (seed, schedule) ``members`` of ``config``, trained together; and the seconds the training took.

    :param log: ``log(i, name, value, step)`` for member i (see :func:`core.fused.train_fused`).
    """
    processes = fresh_members(config, members, precision)
    return processes, train_members(processes, log)


class Terminated(Exception):
    """SIGTERM (a stopped sweep's), raised between two fused steps as Ctrl-C's KeyboardInterrupt is (or once the
    group is set up: :func:`set_up`)."""


def _terminate(signum, frame):
    raise Terminated()


def restored(config: Config, pairs: list[tuple[int, str]], out: Path, precision: str) -> tuple[list, list[dict]]:
    """The members of a group stopped earlier, from every member's checkpoint in ``out``, and their ``extra``;
    fresh members and empty ``extra`` when any checkpoint is missing."""
    paths = [member_checkpoint(out, seed, schedule) for seed, schedule in pairs]
    members = fresh_members(config, pairs, precision)
    if not all(path.exists() for path in paths):
        return members, [{} for _ in pairs]
    extras = []
    for member, path in zip(members, paths):
        state = load_state(path)
        if state.get("precision", member.precision) != member.precision:
            raise ValueError(f"invalid checkpoint {path}: it computed in {state['precision']}, this group in "
                             f"{member.precision}; valid is a checkpoint of this group's precision")
        member.load_state_dict(state)  # refuses a checkpoint of another config, naming the fields that differ
        extras.append(state["extra"])
    return members, extras


def write_members(args, pairs, members, extras: list[dict], group: dict, stopped: bool) -> None:
    """Each member's checkpoint (and its EMA-off twin's, once trained), its ``extra`` holding its loss history,
    its window and the group; ``partial`` where the training was stopped."""
    for (seed, schedule), member, extra in zip(pairs, members, extras):
        state = member.state_dict() | {"extra": extra | {"fused": group} | ({"partial": True} if stopped else {})}
        print(f"seed {seed} {schedule}: {save_state(state, member_checkpoint(args.out, seed, schedule))}")
        if args.ema_off_twins and not stopped:
            save_state(without_ema(state), member_checkpoint(args.out, seed, schedule, ema_off_twin=True))


def history_log(histories: list[list]):
    """A ``log(i, name, value, step)`` that appends to member i's history, and prints each logged point's losses
    on one line for whoever watches."""
    losses = {}

    def log(i: int, name: str, value: float, step: int) -> None:
        histories[i].append((name, value, step))
        if name == "train.loss":
            losses[i] = value
            if i == len(histories) - 1:
                print(f"step {step}: train.loss {' '.join(f'{v:.4f}' for v in losses.values())}", flush=True)
    return log


def parsed(argv: list[str]) -> tuple[argparse.Namespace, Config, dict, list[tuple[int, str]]]:
    """The command line's options, Config, run options and (seed, schedule) members; ValueError names a bad
    value."""
    words = argv[argv.index("with") + 1:] if "with" in argv else []
    parser = argparse.ArgumentParser(prog="python ablations/fused_group.py", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, type=comma_integers("seeds"))
    parser.add_argument("--schedules", type=lambda s: s.split(","),
                        help=f"train the seeds at each of these schedules (from {', '.join(SCHEDULES)}; default: the "
                             "config's)")
    parser.add_argument("--out", required=True, type=Path,
                        help="where each member's checkpoint is written (a stopped group's there are resumed)")
    parser.add_argument("--ema-off-twins", action="store_true",
                        help="with ema=True: also leave each seed's checkpoint as its ema=False cell would (EMA never "
                             "changes training, so one training serves both cells)")
    args = parser.parse_args(argv[:argv.index("with")] if "with" in argv else argv)
    config, options = group_config(words)
    schedules = args.schedules or [config.schedule]
    if any(s not in SCHEDULES for s in schedules) or len(set(schedules)) != len(schedules):
        raise ValueError(f"invalid --schedules {','.join(schedules)}: valid values are distinct names from "
                         f"{', '.join(SCHEDULES)}")
    if args.ema_off_twins and not config.ema:
        raise ValueError("invalid --ema-off-twins with ema=False: valid only for a config with ema=True")
    return args, config, options, [(seed, schedule) for schedule in schedules for seed in args.seeds]


def main(argv: list[str] | None = None) -> int:
    """Exit code: 0 when trained, STOPPED_EXIT when stopped (its checkpoints resume it), 2 for a bad value."""
    try:
        args, config, options, pairs = parsed(sys.argv[1:] if argv is None else argv)
        if options.get("threads"):
            torch.set_num_threads(options["threads"])
        members, extras = restored(config, pairs, args.out, options.get("precision", "auto"))
    except ValueError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    group = extras[0].get("fused") or {"seeds": args.seeds, "members": [list(p) for p in pairs], "train_s": 0.0,
                                       "group": uuid.uuid4().hex}
    if extras[0].get("partial"):
        print(f"resuming group {group['group']} at step {members[0].step}")
        group = group | {"resumed_at": [*group.get("resumed_at", []), members[0].step]}
    histories = [extra.get("history", []) for extra in extras]
    windows = [list(extra.get("window", [])) for extra in extras]
    started, stopped = time.perf_counter(), False
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, _terminate)
    try:
        try:
            train_members(members, history_log(histories), windows)
        except (KeyboardInterrupt, Terminated):
            stopped = True
        for signum in handlers:  # a stop now (or the second of a terminal's Ctrl-C and its sweep's SIGTERM) must
            signal.signal(signum, signal.SIG_IGN)  # not cut the writing short: members at two steps resume no group
        group = group | {"train_s": group["train_s"] + time.perf_counter() - started}
        extras = [{"history": history, "window": window} for history, window in zip(histories, windows)]
        write_members(args, pairs, members, extras, group, stopped)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    print(f"{'stopped' if stopped else 'trained'} {len(members)} members at step {members[0].step} "
          f"({group['train_s']:.1f} s of training)")
    return STOPPED_EXIT if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
