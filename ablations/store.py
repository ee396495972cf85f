"""Where runs go: the MongoDB URL, the embedded local server and the local journal (the observers that write a run
 into them are :mod:`ablations.observers`).

    python -m ablations.store status | start | stop | sync [PART ...] [--adopt DIR] | bundle OUT_DIR

The URL comes from ``-m`` on the experiment's command line, else ``$ABLATIONS_MONGO_URL``, else
``mongodb://127.0.0.1:27017`` with database ``ablations``. Only with that default, when nothing
answers, the embedded server (SecantusDB, a MongoDB-wire server) is started in the background
with its data in ``$ABLATIONS_HOME/mongo`` (default ``runs/mongo`` in the repository).

Every run is also journaled to ``$ABLATIONS_HOME/journal`` by Sacred's FileStorageObserver, so a
database that goes away loses nothing: ``sync`` uploads journaled runs (see :mod:`ablations.sync`).
The journal of a database is ``journal/<db name>/db-<identity>/<run id>/``: the identity is a random
name the database itself keeps (collection ``journal_identity``), so two servers with a database of
one name, or a database deleted and made anew, never share a journal, and ``sync`` uploads into a
database only its own runs (and the journal-only runs of ``journal/<db name>/offline/``); ``sync --adopt DIR``
uploads another journal's too, to rebuild a database that was lost.
Runs made with ``--journal-only`` on a machine that cannot reach the database travel as
``bundle`` parts (see :mod:`ablations.bundle`), which ``sync PART ...`` unpacks and uploads.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pymongo

from ablations import bundle, sweep_manifest, sync

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_URL = "mongodb://127.0.0.1:27017"
DEFAULT_DB = "ablations"
URL_ENV = "ABLATIONS_MONGO_URL"
# How long a database may stay silent before we call it down (Sacred's own default is 30 s).
TIMEOUT_MS = 5000
IDENTITY_COLLECTION = "journal_identity"


def home() -> Path:
    """Root of local state: the embedded server's data and the journal ($ABLATIONS_HOME, default runs/)."""
    return Path(os.environ.get("ABLATIONS_HOME", REPO_ROOT / "runs"))


@dataclass(frozen=True)
class Target:
    """A database to store runs in. ``explicit`` is False only for the built-in default."""

    url: str
    db_name: str
    explicit: bool

    @property
    def safe_url(self) -> str:
        return redact(self.url)

    def journal_dir(self, online: bool = True) -> Path:
        """Journal of this database (asks the database its identity): runs named by their database id; or
        ``offline/``, the journal-only runs that any database of this name may take in."""
        base = home() / "journal" / self.db_name
        return base / f"db-{identity(self)}" if online else base / "offline"

    def client(self, timeout_ms: int = TIMEOUT_MS) -> pymongo.MongoClient:
        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms)


def identity(target: Target) -> str:
    """The random name a database keeps for itself, made by the first process to ask (an insert under one fixed
    ``_id``, so that of processes asking at once one makes it and all read it; SecantusDB's upserting
    find-and-modify answered some of them with nothing). Asked afresh each time: a sweep outlives a database
    deleted and made anew, and must journal and fetch its next runs under the new one's name.

    :raises pymongo.errors.PyMongoError: when the database does not answer (asked before any run starts).
    """
    with target.client() as client:
        names = client[target.db_name][IDENTITY_COLLECTION]
        if kept := names.find_one({"_id": "journal"}):
            return kept["identity"]
        with contextlib.suppress(pymongo.errors.DuplicateKeyError):
            names.insert_one({"_id": "journal", "identity": uuid.uuid4().hex[:12],
                              "created": dt.datetime.now(dt.timezone.utc)})
        return names.find_one({"_id": "journal"})["identity"]


def own_journal(target: Target) -> Path | None:
    """The journal of ``target``'s database where the database has an identity already, else None (asks
    without making one)."""
    with target.client() as client:
        kept = client[target.db_name][IDENTITY_COLLECTION].count_documents({"_id": "journal"}, limit=1)
    return target.journal_dir() if kept else None


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``: credentials never reach records or logs."""
    return re.sub(r"(mongodb(?:\+srv)?://[^:/@]+):[^@]*@", r"\1:***@", url)


def parse(value: str, source: str = "-m") -> tuple[str, str]:
    """A ``-m`` value -> (url, db_name). Accepts a ``mongodb://`` URL (database from its path) or
    Sacred's ``[host:port:]db_name`` form; ``source`` names where the value came from in the error."""
    if value.startswith(("mongodb://", "mongodb+srv://")):
        path = urlsplit(value).path.strip("/")
        db_name = path or DEFAULT_DB
        url = value if not path else value.replace("/" + path, "", 1)
        return url, db_name
    parts = value.split(":")
    if len(parts) == 3:
        return f"mongodb://{parts[0]}:{parts[1]}", parts[2]
    if len(parts) == 1 and parts[0]:
        return DEFAULT_URL, parts[0]
    raise ValueError(f"invalid {source} value {redact(value)!r}: valid forms are mongodb://HOST:PORT[/DB] "
                     "or HOST:PORT:DB or DB")


def resolve(mongo_arg: str | None = None) -> Target:
    """``-m`` first, then ``$ABLATIONS_MONGO_URL``, then the default (which may start the embedded server). A value
    :func:`parse` does not take raises its ValueError, which names where the value came from."""
    if mongo_arg is not None:
        return Target(*parse(mongo_arg), explicit=True)
    if value := os.environ.get(URL_ENV):
        return Target(*parse(value, f"${URL_ENV}"), explicit=True)
    return Target(DEFAULT_URL, DEFAULT_DB, explicit=False)


def mongo_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add every CLI's database option, ``-m``/``--mongo URL`` as ``args.mongo`` (``--mongo-url``, its old name in
    analysis/, still works); a value :func:`parse` does not take is a usage error, before any work."""
    def checked(value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value
    parser.add_argument("-m", "--mongo", "--mongo-url", dest="mongo", metavar="URL", type=checked,
                        help="mongodb://HOST:PORT[/DB], HOST:PORT:DB or DB (default: $ABLATIONS_MONGO_URL or local)")


def journal_runs(target: Target) -> list[Path]:
    """Journal run directories of ``target``: its online ones (named by database id), then the offline ones."""
    return run_dirs(target.journal_dir(online=True)) + run_dirs(target.journal_dir(online=False))


def journals_named(target: Target) -> list[Path]:
    """The journals on this machine of every database named as ``target``'s that hold runs: ``journal/<db>/db-*/``,
    and ``journal/<db>/`` itself where it holds runs journaled before databases had an identity."""
    base = home() / "journal" / target.db_name
    return [d for d in [*sorted(base.glob("db-*")), base] if run_dirs(d)]


def run_dirs(base: Path) -> list[Path]:
    """The run folders of one journal folder, by name."""
    if not base.is_dir():
        return []
    return sorted((d for d in base.iterdir() if (d / "run.json").exists()), key=lambda d: d.name)


def sync_journal(target: Target, adopted: list[Path] = (), log=print) -> bool:
    """Upload every journaled run of ``target`` into its database, then those of the journal folders ``adopted``
    (another database's, to rebuild a lost one), and the journal-only sweeps' manifests; True when none failed."""
    with target.client() as client:
        db = client[target.db_name]
        synced = sync.sync_all(db, journal_runs(target) + [d for folder in adopted for d in run_dirs(folder)], log)
        sweep_manifest.upload(db, target.journal_dir(online=False), log)
        return synced


def ping(target: Target, timeout_ms: int = 2000) -> bool:
    try:
        with target.client(timeout_ms) as client:
            client.admin.command("ping")
        return True
    except pymongo.errors.PyMongoError:
        return False


class StoreUnavailable(RuntimeError):
    """The database does not answer and we may not start one."""


def ensure_server(target: Target, log=print) -> None:
    """Make sure ``target`` answers: start the embedded server for the default, fail fast otherwise."""
    if ping(target, TIMEOUT_MS if target.explicit else 1000):
        return
    if target.explicit:
        raise StoreUnavailable(
            f"no MongoDB answers at {target.safe_url} (waited {TIMEOUT_MS / 1000:.0f} s). Start it, or run "
            f"journal-only with --journal-only and upload later with `python -m ablations.store sync`.")
    start_embedded(target, log=log)


@contextlib.contextmanager
def database(target: Target | str | None = None, log=print):
    """The database of ``target`` (a :class:`Target`, or a ``-m`` value for :func:`resolve`), answering: for the
    default, the embedded server is started when nothing answers.

    :raises StoreUnavailable: naming the URL, when a database given by ``-m`` or the environment does not answer.
    """
    target = target if isinstance(target, Target) else resolve(target)
    ensure_server(target, log=log)
    with target.client() as client:
        yield client[target.db_name]


def _server_files(root: Path | None = None) -> dict[str, Path]:
    root = root or home() / "mongo"
    return {"root": root, "data": root / "data", "log": root / "server.log", "pid": root / "server.pid",
            "config": root / "secantusd.toml"}


def server_pid() -> int | None:
    """PID of the embedded server we started, if it is still alive."""
    pid_file = _server_files()["pid"]
    if not pid_file.exists():
        return None
    pid = int(pid_file.read_text().split()[0])
    try:
        os.kill(pid, 0)
        return pid
    except OSError:
        return None


def start_embedded(target: Target | None = None, log=print, wait_s: float = 30.0) -> int:
    """Start SecantusDB in the background on the target's port; wait until it answers; return its PID."""
    target = target or resolve()
    host, port = urlsplit(target.url).hostname or "127.0.0.1", urlsplit(target.url).port or 27017
    files = _server_files()
    files["data"].mkdir(parents=True, exist_ok=True)
    files["config"].touch()  # an empty config file pins the settings to our flags (no auto-discovery)
    cmd = [sys.executable, "-m", "secantus", "--host", host, "--port", str(port), "--storage-path",
           str(files["data"]), "--config", str(files["config"]), "--log-level", "WARNING"]
    with open(files["log"], "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)  # outlives this process, like a daemon
    files["pid"].write_text(f"{proc.pid} {port}\n")
    deadline = time.monotonic() + wait_s
    while not ping(target, 500):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise StoreUnavailable(f"the embedded server did not start; see {files['log']}")
        time.sleep(0.2)
    log(f"Started the embedded MongoDB-compatible server (SecantusDB) at {target.safe_url}, "
        f"data in {files['data']}, PID {proc.pid}.")
    return proc.pid


def stop_embedded(log=print) -> bool:
    """SIGTERM the embedded server we started and wait for it to exit."""
    pid = server_pid()
    if pid is None:
        log("The embedded server is not running.")
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except OSError:
            break
        time.sleep(0.1)
    _server_files()["pid"].unlink(missing_ok=True)
    log(f"Stopped the embedded server (PID {pid}).")
    return True


def status(target: Target, log=print) -> None:
    pid = server_pid()
    up = ping(target)
    log(f"database : {target.safe_url} / {target.db_name} ({'answers' if up else 'does not answer'})")
    log(f"embedded : {'running, PID ' + str(pid) if pid else 'not running'} (data in {_server_files()['data']})")
    journal = own_journal(target) if up else None  # read, not made: a status changes nothing in the database
    log(f"journal  : {journal or home() / 'journal' / target.db_name}" + ("" if journal or not up else
        " (this database has journaled no run yet)"))
    if groups := sorted(home().glob("fused/*/group.json")):  # kept by a fused training stopped or whose runs failed
        mib = sum(f.stat().st_size for group in groups for f in group.parent.iterdir()) / 2**20
        log(f"fused    : {len(groups)} group(s) left in {home() / 'fused'} ({mib:.0f} MiB), each resumed by the "
            "sweep that left it; delete a group's folder to drop it")
    if up:
        with target.client() as client:
            runs = client[target.db_name]["runs"]
            counts = {s: runs.count_documents({"status": s}) for s in runs.distinct("status")}
        log(f"runs     : {counts or 'none'}")
        for other in (d for d in journals_named(target) if d != journal):
            log(f"other    : {other} ({len(run_dirs(other))} runs of another database of this name, or of this one "
                "before it was made anew; `sync --adopt` it to upload them here)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ablations.store", description=__doc__.splitlines()[0],
                                     epilog="bundle OUT_DIR packs the journal-only runs into parts of at most "
                                            "--part-mib; sync [PART ...] unpacks such parts first, then uploads")
    parser.add_argument("command", choices=["status", "start", "stop", "sync", "bundle"])
    parser.add_argument("paths", nargs="*", help="bundle: the output directory; sync: bundle parts to upload")
    mongo_option(parser)
    parser.add_argument("--checkpoints", action="store_true", help="bundle: carry the full checkpoints too")
    parser.add_argument("--part-mib", type=float, default=bundle.PART_MIB, help="bundle: largest part (MiB)")
    parser.add_argument("--adopt", action="append", default=[], type=Path, metavar="DIR",
                        help="sync: also upload the runs of another database's journal, DIR = journal/<db>/db-<id>/ "
                             "(to rebuild a database that was lost; `status` lists them)")
    args = parser.parse_args(argv)
    if len(args.paths) != 1 if args.command == "bundle" else args.paths and args.command != "sync":
        parser.error(f"invalid paths {args.paths} for {args.command}: bundle takes one output directory, "
                     "sync takes bundle parts or none, the others take none")
    if args.adopt and args.command != "sync":
        parser.error(f"invalid --adopt for {args.command}: only sync adopts another database's journal")
    if args.part_mib <= 0:
        parser.error(f"invalid --part-mib {args.part_mib:g}: valid values are positive numbers of MiB")
    try:
        target = resolve(args.mongo)
    except ValueError as exc:  # a bad $ABLATIONS_MONGO_URL (the parser has checked -m)
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    if args.command == "status":
        status(target)
    elif args.command == "start":
        if ping(target):
            print(f"{target.safe_url} already answers.")
        else:
            start_embedded(target)
    elif args.command == "stop":
        stop_embedded()
    elif args.command == "bundle":
        offline = run_dirs(target.journal_dir(online=False))  # no database is asked: there may be none
        if not offline:
            print(f"ERROR: no journal-only runs under {target.journal_dir(online=False)}", file=sys.stderr)
            return 2
        try:
            bundle.write(offline, Path(args.paths[0]), args.checkpoints, args.part_mib)
        except ValueError as exc:  # a run larger than a part: said before any part is written
            print(f"ERROR: {exc}", file=sys.stderr)
            return 2
    else:
        try:
            return sync_command(target, [Path(p) for p in args.paths], args.adopt)
        except StoreUnavailable as exc:  # the database of an explicit URL does not answer: said before any upload
            print(f"ERROR: {exc}", file=sys.stderr)
            return 2
    return 0


def sync_command(target: Target, parts: list[Path], adopted: list[Path] = ()) -> int:
    """Unpack bundle parts, then upload (parts and adopted journals are checked first: a bad one is an error before
    anything moves)."""
    missing = [str(p) for p in parts if not p.is_file() or not p.name.endswith(bundle.SUFFIX)]
    if missing:
        print(f"ERROR: invalid bundle part(s) {missing}: valid values are existing *{bundle.SUFFIX} files "
              "written by `python -m ablations.store bundle`", file=sys.stderr)
        return 2
    if bad := [str(folder) for folder in adopted if not run_dirs(folder)]:
        valid = [str(d) for d in journals_named(target)] or f"db-* folders under {home() / 'journal'}/<db>/"
        print(f"ERROR: invalid --adopt {bad}: no journaled runs there; valid values are {valid}", file=sys.stderr)
        return 2
    ensure_server(target)
    for part in parts:
        bundle.unpack(part, target.journal_dir(online=False))
    return 0 if sync_journal(target, adopted) else 1


if __name__ == "__main__":
    sys.exit(main())
