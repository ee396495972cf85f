"""Train a fused group (:mod:`core.fused`) and leave each member's checkpoint.

    python ablations/fused_group.py --seeds 0,1,2 --out DIR with smoke attention=False threads=2
    python ablations/fused_group.py --seeds 0,1,2 --schedules cosine,linear --out DIR with smoke

``ablations/sweep.py --fuse`` runs this for each group of cells that can be fused, then each member
as a normal ``ablations/run.py`` run with ``fused=True fused_checkpoint=DIR/seed-S-SCHEDULE.pt``: the
run takes its trained state and its loss history from that checkpoint, records the group in
``info.fused`` (its members, its training seconds, its id) and evaluates as any run does.
``analysis/audit.py --reproduce`` re-trains the whole group to re-execute one of its runs.

A group's members are its seeds x ``--schedules`` (default: the config's own schedule), since the
schedule sets only the coefficients that noise a member's batch. EMA never changes training, so
cells that differ only in ``ema`` share one too: with ``--ema-off-twins`` an ``ema=True`` group also
leaves each member's checkpoint as its ``ema=False`` cell would have, bit for bit.
"""
from __future__ import annotations

import argparse
import sys
import time
import uuid
from pathlib import Path

import torch

from ablations.plan import comma_integers, fields_of
from core.checkpoint import save_state, without_ema
from core.config import Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.fused import FusedTraining, train_fused
from core.schedules import SCHEDULES


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


def trained_group(config: Config, members: list[tuple[int, str]], precision: str = "auto",
                  log=None) -> tuple[list, float]:
    """The (seed, schedule) ``members`` of ``config``, trained together; and the seconds the training took.

    :param log: ``log(i, name, value, step)`` for member i (see :func:`core.fused.train_fused`).
    """
    members = [DiffusionProcess(config.replace(seed=s, schedule=sch), precision=precision) for s, sch in members]
    started = time.perf_counter()
    train_fused(FusedTraining(members), as_tensor(mnist(train=True)), log=log)
    if members[0].device.type == "cuda":
        torch.cuda.synchronize()
    return members, time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    words = argv[argv.index("with") + 1:] if "with" in argv else []
    parser = argparse.ArgumentParser(prog="python ablations/fused_group.py", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", required=True, type=comma_integers("seeds"))
    parser.add_argument("--schedules", type=lambda s: s.split(","),
                        help=f"train the seeds at each of these schedules (from {', '.join(SCHEDULES)}; default: the "
                             "config's)")
    parser.add_argument("--out", required=True, type=Path, help="where each member's checkpoint is written")
    parser.add_argument("--ema-off-twins", action="store_true",
                        help="with ema=True: also leave each seed's checkpoint as its ema=False cell would (EMA never "
                             "changes training, so one training serves both cells)")
    args = parser.parse_args(argv[:argv.index("with")] if "with" in argv else argv)
    try:
        config, options = group_config(words)
    except ValueError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 2
    schedules = args.schedules or [config.schedule]
    if any(s not in SCHEDULES for s in schedules) or len(set(schedules)) != len(schedules):
        print(f"ERROR: invalid --schedules {','.join(schedules)}: valid values are distinct names from "
              f"{', '.join(SCHEDULES)}", file=sys.stderr)
        return 2
    if args.ema_off_twins and not config.ema:
        print("ERROR: invalid --ema-off-twins with ema=False: valid only for a config with ema=True", file=sys.stderr)
        return 2
    if options.get("threads"):
        torch.set_num_threads(options["threads"])
    pairs = [(seed, schedule) for schedule in schedules for seed in args.seeds]
    histories: list[list] = [[] for _ in pairs]
    members, train_s = trained_group(config, pairs, options.get("precision", "auto"),
                                     log=lambda i, name, value, step: histories[i].append((name, value, step)))
    group = {"seeds": args.seeds, "members": [list(p) for p in pairs], "train_s": train_s, "group": uuid.uuid4().hex}
    for (seed, schedule), member, history in zip(pairs, members, histories):
        state = member.state_dict() | {"extra": {"history": history, "window": [], "fused": group}}
        print(f"seed {seed} {schedule}: {save_state(state, member_checkpoint(args.out, seed, schedule))}")
        if args.ema_off_twins:
            save_state(without_ema(state), member_checkpoint(args.out, seed, schedule, ema_off_twin=True))
    print(f"trained {len(members)} members in {train_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
