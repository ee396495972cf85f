"""The Sacred experiment: train, evaluate and record one configuration.

    python ablations/run.py with attention=False            # the `small` scale by default
    python ablations/run.py with smoke ema=True seed=3      # named scales: smoke, small, paper
    python ablations/run.py print_config with paper
    python ablations/run.py with resume=RUN_ID              # continue an interrupted run exactly
    python ablations/run.py -m mongodb://host:27017/mydb with schedule=linear
    python ablations/run.py --journal-only with smoke       # no database now; `python -m ablations.store sync` later
    python ablations/run.py with fused=True fused_checkpoint=DIR/seed-0-cosine.pt   # what `sweep.py --fuse` runs

The config is built from :class:`core.config.Config` (the single source of defaults and valid
choices) plus the run options below; invalid values fail before the database is reached.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import ablations  # noqa: F401  (first: it silences Sacred's pkg_resources warning)
from docopt import DocoptExit, docopt
from sacred import Experiment
from sacred.arg_parser import get_config_updates
from sacred.initialize import create_run
from sacred.observers import MongoObserver
from sacred.utils import SacredError

from ablations import stopping, store
from ablations.observers import observers
from ablations.plan import planned_precision
from ablations.record import CHECKPOINT, CONFIG_KEYS, RUN_OPTIONS, check_config_keys
from ablations.runner import execute
from core.checkpoint import load_state
from core.config import SCALES, Config

UNOBSERVED_COMMANDS = {"print_config", "print_dependencies", "save_config", "print_named_configs"}

ex = Experiment("mnist_ddpm")
ex.add_config(Config().to_dict() | RUN_OPTIONS)
for _name, _overrides in SCALES.items():
    ex.add_named_config(_name, dict(_overrides, scale=_name, checkpoint_every=_overrides.get("log_every", 20) * 5))
TARGET: store.Target | None = None  # set by cli() before Sacred runs
JOURNAL_ONLY = False  # likewise: runs go to the journal's offline/ directory, not the database


def _check_run_options(config: dict) -> None:
    for name in ("threads", "checkpoint_every"):
        if not isinstance(config[name], int) or isinstance(config[name], bool) or config[name] < 0:
            raise ValueError(f"invalid {name}={config[name]!r}: valid values are integers >= 0")
    if config["checkpoint_every"] and config["checkpoint_every"] % config["log_every"]:
        raise ValueError(f"invalid checkpoint_every={config['checkpoint_every']}: valid values are 0 or "
                         f"multiples of log_every={config['log_every']}")
    if not isinstance(config["fused"], bool):
        raise ValueError(f"invalid fused={config['fused']!r}: valid values are True or False")
    if config["fused"] != (config["fused_checkpoint"] is not None):
        raise ValueError(f"invalid fused={config['fused']} with fused_checkpoint={config['fused_checkpoint']!r}: "
                         "valid is both or neither (fused runs are trained by `ablations/sweep.py --fuse`, "
                         "which sets both)")
    if config["scale"] not in (*SCALES, "custom"):
        raise ValueError(f"invalid scale={config['scale']!r}: valid values are {', '.join(SCALES)} or custom")


def _resumed_config(run_id) -> dict:
    """The stored config of run ``run_id`` and its checkpoint, from the local journal."""
    target = TARGET or store.resolve()
    offline = target.journal_dir(online=False)
    journals = [offline] if JOURNAL_ONLY else [target.journal_dir(), offline]  # the database's own journal first
    run_dir = next((d / str(run_id) for d in journals if (d / str(run_id) / "config.json").exists()), None)
    if run_dir is None or not (run_dir / CHECKPOINT).exists():
        raise ValueError(f"invalid resume={run_id!r}: no journaled run with a checkpoint under "
                         f"{journals[0]} (valid values are ids of interrupted runs of this database)")
    stored = json.loads((run_dir / "config.json").read_text())
    resumed = {k: v for k, v in stored.items() if k in CONFIG_KEYS} | {
        "resume": run_id, "resume_checkpoint": str(run_dir / CHECKPOINT)}
    # A run continues in the precision it trained in (checkpoints from before it was recorded: as requested).
    resumed["precision"] = load_state(run_dir / CHECKPOINT).get("precision", resumed.get("precision", "auto"))
    planned_precision(Config.from_mapping(resumed), resumed["precision"])  # this device can run it, or ValueError
    return resumed


@ex.config_hook
def validate(config, command_name, logger):
    """Runs before the run exists: a bad value is refused before anything is stored, in one line (exit 2;
    SystemExit passes through Sacred, which would print any other error as a traceback)."""
    try:
        if config.get("resume") is not None and config.get("resume_checkpoint") is None:
            return _resumed_config(config["resume"])
        requested = Config.from_mapping(config)  # ValueError names the field, the value and the valid choices
        _check_run_options(config)
        planned_precision(requested, config["precision"])  # likewise for a precision this device cannot run
    except ValueError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return {}


@ex.main
def main(_run, _config):
    return execute(_run, _config)


def _split_store_options(argv: list[str]) -> tuple[list[str], str | None, bool]:
    """Take ``-m``/``--mongo_db`` and ``--journal-only`` out of argv: the store handles them, not Sacred."""
    rest, mongo, journal_only, i = [], None, False, 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-m", "--mongo_db"):  # a missing value is "", which resolve() refuses by name
            mongo, i = (argv[i + 1] if i + 1 < len(argv) else ""), i + 2
            continue
        if arg.startswith("--mongo_db="):
            mongo = arg.split("=", 1)[1]
        elif arg == "--journal-only":
            journal_only = True
        else:
            rest.append(arg)
        i += 1
    return rest, mongo, journal_only


def _check_values(argv: list[str]) -> None:
    """Build the config as Sacred will (named configs, then updates) and run :func:`validate` on it, with no
    observer. An argv Sacred cannot parse is left to Sacred, which says so."""
    try:
        args = docopt(ex.get_usage()[2], [str(a) for a in argv[1:]], default_help=False)
    except DocoptExit:
        return
    updates, named_configs = get_config_updates(args["UPDATE"])
    if "resume" in updates:  # a resumed run's config is in its database's journal: checked once it answers
        return
    if unknown := [word for word in named_configs if word not in SCALES and not Path(word).is_file()]:
        raise ValueError(f"invalid named config {unknown[0]!r}: valid values are {', '.join(SCALES)} or an "
                         "existing config file")
    create_run(ex, "main", updates, named_configs=named_configs)  # validate() exits 2 itself, saying why


def _refuse_a_bad_command_line(argv: list[str], command: str) -> None:
    """Exit 2 in one line on an unknown key, command or named config, or a bad value, before the database is
    reached (or the embedded server started for a typo) and before any run is stored."""
    try:
        check_config_keys([w.split("=", 1)[0] for w in argv[argv.index("with") + 1:] if "=" in w] if "with" in argv
                          else [])
        if command not in (commands := [name for name, _ in ex.gather_commands()]):  # `run.py smoke`, no `with`
            raise ValueError(f"invalid command {command!r}: valid commands are {', '.join(commands)} (or none: a "
                             "run), followed by `with` and named configs or KEY=VALUE updates")
        if command == "main":
            _check_values(argv)
    except (ValueError, SacredError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def cli(argv: list[str] | None = None) -> int:
    global TARGET, JOURNAL_ONLY
    argv, mongo, journal_only = _split_store_options(list(sys.argv if argv is None else argv))
    JOURNAL_ONLY = journal_only
    command = argv[1] if len(argv) > 1 and not argv[1].startswith("-") and argv[1] != "with" else "main"
    if command == "help" or {"-h", "--help"} & set(argv):  # Sacred's usage, with no database started for it
        ex.run_commandline(argv)
        return 0
    _refuse_a_bad_command_line(argv, command)
    try:
        TARGET = store.resolve(mongo)
    except ValueError as exc:  # a -m value or $ABLATIONS_MONGO_URL of no form a database has
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if command not in UNOBSERVED_COMMANDS and not {"-u", "--unobserved"} & set(argv):
        if not journal_only:
            try:
                store.ensure_server(TARGET)
            except store.StoreUnavailable as exc:
                print(f"ERROR: {exc}", file=sys.stderr)
                return 2
        ex.observers[:] = observers(TARGET, journal_only)
    stopping.install()
    run = ex.run_commandline(argv)
    failed = [o for o in getattr(run, "_failed_observers", []) if isinstance(o, MongoObserver)]
    if failed:
        print(f"WARNING: the database at {TARGET.safe_url} failed during the run; the run is complete in the "
              f"journal ({run.observers[-1].dir}). Upload it with `python -m ablations.store sync`.", file=sys.stderr)
    return 0 if run is not None and run.status == "COMPLETED" else 1


if __name__ == "__main__":
    sys.exit(cli())
