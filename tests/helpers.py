"""What the tests share: a real SecantusDB server, experiment subprocesses, and reading stored runs back."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import gridfs
import pymongo

from ablations.record import final_weights as stored_final_weights

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, port: int | None = None):
        self.root, self.port, self.proc = root, port or free_port(), None
        self.url = f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> "Server":
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        (self.root / "secantusd.toml").touch()
        cmd = [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(self.port), "--storage-path",
               str(self.root / "data"), "--config", str(self.root / "secantusd.toml"), "--log-level", "WARNING"]
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with pymongo.MongoClient(self.url, serverSelectionTimeoutMS=300) as c:
                    c.admin.command("ping")
                return self
            except pymongo.errors.PyMongoError:
                time.sleep(0.2)
        raise RuntimeError(f"secantusdb did not start on port {self.port}")

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=30)

    def db(self, name: str = "ablations"):
        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000)[name]


def journal_of(server: Server, home, db: str = "ablations") -> Path:
    """Where the runs of database ``db`` on ``server`` are journaled under ABLATIONS_HOME ``home`` (a path that does
    not exist until a run has given the database its identity; see ablations.store)."""
    doc = server.db(db).journal_identity.find_one({"_id": "journal"})
    return Path(home) / "journal" / db / (f"db-{doc['identity']}" if doc else "no-identity-yet")


def run_env(server_url: str, home: Path) -> dict:
    return os.environ | {"ABLATIONS_MONGO_URL": server_url, "ABLATIONS_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def experiment(args: list[str], env: dict, **kwargs) -> subprocess.Popen | subprocess.CompletedProcess:
    """Run `python ablations/run.py ARGS` to completion (or start it, with background=True)."""
    cmd = [sys.executable, str(REPO / "ablations" / "run.py"), *args]
    if kwargs.pop("background", False):
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, **kwargs)


def refusal(args: list[str], env: dict, end_to_end: bool, monkeypatch, capfd) -> tuple[int, str]:
    """The exit status and stderr of `python ablations/run.py ARGS` that is refused before any run: as a subprocess
    when ``end_to_end``, else in this process through ``ablations.run.cli`` (what the script's main calls), which
    spares the ~6 s of imports a process pays: a command line refused in-process is refused by the same code."""
    if end_to_end:
        out = experiment(args, env, timeout=60)
        return out.returncode, out.stderr
    from ablations import run

    for name in ("ABLATIONS_MONGO_URL", "ABLATIONS_HOME"):
        monkeypatch.setenv(name, env[name])
    try:
        code = run.cli(["run.py", *args])
    except SystemExit as exc:
        code = exc.code
    return code, capfd.readouterr().err


def start_experiment(args: list[str], env: dict) -> tuple[subprocess.Popen, int]:
    """Start `python ablations/run.py ARGS` in the background; return it and its run id once Sacred prints it."""
    proc = experiment(args, env, background=True)
    lines = []
    wait_for(lambda: lines.append(proc.stdout.readline()) or "Started run with ID" in lines[-1], 60, "run start")
    return proc, run_id(lines[-1])


def run_id(output: str) -> int:
    """The run id in Sacred's "Started run with ID" line."""
    return int(re.search(r'Started run with ID "(\d+)"', output).group(1))


def metrics_of(db, rid: int) -> dict:
    """Every metric series of a stored run: name -> (steps, values)."""
    return {m["name"]: (m["steps"], m["values"]) for m in db.metrics.find({"run_id": rid})}


def deterministic(metrics: dict) -> dict:
    """Every metric but throughput, which depends on the machine's load."""
    return {k: v for k, v in metrics.items() if k != "train.images_per_s"}


def final_weights(db, rid: int) -> dict:
    """The model weights among a stored run's final weights."""
    return stored_final_weights(gridfs.GridFS(db), db.runs.find_one({"_id": rid}))["model"]


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# The attention-only smoke sweep at seed 0 that tests/conftest.py's `sequential_db` stores one run at a time.
SEQUENTIAL = ["--only", "attention", "--seeds", "0", "with", "smoke", "train_steps=10", "threads=1"]


def run_sweep(args: list[str], env: dict, **kwargs) -> subprocess.CompletedProcess:
    """Run `python ablations/sweep.py ARGS` to completion."""
    return subprocess.run([sys.executable, str(REPO / "ablations" / "sweep.py"), *args], env=env,
                          capture_output=True, text=True, **kwargs)
