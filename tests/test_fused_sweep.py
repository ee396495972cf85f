"""Fused sweeps (``sweep.py --fuse``): each seed its own run record, a stopped training resumed, the jobs a
fused sweep runs, the options it refuses, and one group trained once by two machines sharing a database; against a
real server."""
from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch

from ablations import sweep
from analysis.audit import check_consistency
from analysis.report import setting
from analysis.reproduce import refusal, reproduce
from analysis.runs import runs_table
from tests.helpers import REPO, final_weights, metrics_of, run_sweep, wait_for


def test_a_fused_sweep_records_each_seed_as_its_own_run_and_one_reproduces_with_its_group(server, env,
                                                                                           sequential_db, tmp_path):
    """--fuse, journal-only, synced at home: the baseline, its EMA cell and its linear-schedule cell (seed 0; the
    fusion of several seeds is tested in tests/test_fused.py) trained once, as one network of two members (the
    schedules), then each a normal run record whose loss curve is its solo twin's up to rounding; fused cells
    have keys of their own, a second sweep (away and at home) finds them stored, and a run reproduces bit for bit
    by re-training its group. The sweep is stopped once in its fused training, which the next one resumes."""
    # no database answers there; the journal is kept under the name of the database it is synced to
    away = env | {"ABLATIONS_HOME": str(tmp_path / "away"), "ABLATIONS_MONGO_URL": "mongodb://127.0.0.1:9/fused"}
    # a third of smoke's steps, since fused steps are slow on a CPU; two runs at a time (packing changes no result)
    fused = ["--fuse", "--journal-only", "--pack", "2", "--only", "ema,schedule", "--seeds", "0", "with", "smoke",
             "threads=1", "train_steps=10"]
    stopped = subprocess.Popen([sys.executable, str(REPO / "ablations" / "sweep.py"), *fused], env=away,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: training_can_stop(tmp_path / "away"), 180, "the fused training under way")
    stopped.send_signal(signal.SIGTERM)  # as `kill` or a deadline sends it
    output = stopped.communicate(timeout=120)[0]
    assert stopped.returncode == 1, output[-3000:]
    assert "Stopped: 0 runs INTERRUPTED, 3 whose fused training stopped, 0 not started" in output, output[-3000:]
    assert len(list((tmp_path / "away" / "fused").glob("*/seed-0-*.pt"))) == 2  # the members, left to resume
    told = subprocess.run([sys.executable, "-m", "ablations.store", "status"], env=away, capture_output=True,
                          text=True, cwd=REPO).stdout
    assert f"fused    : 1 group(s) left in {tmp_path / 'away' / 'fused'}" in told, told
    first = run_sweep(fused, away)
    assert first.returncode == 0 and first.stdout.count("COMPLETED") == 3, first.stdout[-3000:] + first.stderr
    assert not list((tmp_path / "away" / "fused").glob("*"))  # all stored: the group's checkpoints are gone
    assert run_sweep(fused, away).stdout.count("stored") == 3
    synced = subprocess.run([sys.executable, "-m", "ablations.store", "sync", "-m", f"{server.url}/fused"],
                            env=away, capture_output=True, text=True, cwd=REPO)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    db = server.db("fused")
    docs = {(d["config"]["cell"], d["config"]["seed"]): d for d in db.runs.find({"status": "COMPLETED"})}
    assert len(docs) == 3 and len({d["info"]["fused"]["group"] for d in docs.values()}) == 1  # one training
    assert all(check_consistency(db, d) == [] for d in docs.values())  # a fused identity, as the audit computes it
    assert all(len(d["info"]["fused"]["resumed_at"]) == 1 for d in docs.values())  # ... stopped and resumed once
    assert sorted(map(tuple, docs["schedule=linear", 0]["info"]["fused"]["members"])) == [(0, "cosine"), (0, "linear")]
    assert docs["schedule=linear", 0]["config"]["schedule"] == "linear"
    # EMA never changes training: the EMA cell's trained weights are the baseline's
    assert all(torch.equal(a, b) for a, b in zip(final_weights(db, docs["baseline", 0]["_id"]).values(),
                                                 final_weights(db, docs["ema=True", 0]["_id"]).values()))
    doc, twin = docs["baseline", 0], sequential_db.runs.find_one({"config.cell": "baseline", "config.seed": 0})
    assert doc["info"]["fused"]["seeds"] == [0] and doc["config"]["fused"] is True
    assert doc["info"]["config_hash"] != twin["info"]["config_hash"]  # a cell of its own
    assert set(doc["info"]) == set(twin["info"]) | {"fused"} and set(doc["result"]) == set(twin["result"])
    steps, losses = metrics_of(db, doc["_id"])["train.loss"]
    solo_steps, solo_losses = metrics_of(sequential_db, twin["_id"])["train.loss"]  # both trained 10 steps
    assert steps == solo_steps[:len(steps)] == [5, 10]
    assert losses == pytest.approx(solo_losses[:len(losses)], rel=2e-2)
    facts = setting(runs_table(list(docs.values())))
    assert "3 runs trained fused with the other members of their group, as one network" in facts["training"]
    assert facts["wall time"].startswith("3 runs in ") and ", fused; started" in facts["wall time"]
    assert "; 3 resumed training begun before it, not counted)" in facts["wall time"]  # the stopped sitting's
    home = env | {"ABLATIONS_HOME": str(tmp_path / "home")}
    home_sweep = run_sweep(["-m", f"{server.url}/fused", "--fuse", *fused[2:]], home)  # the same sweep at home
    assert home_sweep.returncode == 0 and home_sweep.stdout.count("stored") == 3, home_sweep.stdout
    if refusal(docs["baseline", 0]):
        pytest.skip(f"this checkout cannot reproduce its own runs: {refusal(docs['baseline', 0])}")
    # the EMA-off twin, made from the EMA group's stopped and resumed training, re-executed by an EMA-off group
    # never stopped: bit for bit
    assert reproduce(db, docs["baseline", 0]["_id"], log=lambda line: None) == 0


def training_can_stop(home: Path) -> bool:
    """Whether a fused training of ``home``'s sweep runs and handles SIGTERM (/proc's SigCgt mask): a stop then
    leaves its members' checkpoints."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if "fused_group.py" in " ".join(proc.info["cmdline"] or []) and str(home) in " ".join(proc.info["cmdline"]):
            with contextlib.suppress(OSError):
                caught = re.search(r"SigCgt:\s*([0-9a-f]+)", Path(f"/proc/{proc.info['pid']}/status").read_text())
                return bool(int(caught.group(1), 16) >> (signal.SIGTERM - 1) & 1)
    return False


def test_a_fused_sweep_runs_each_training_as_one_job_and_dropout_alone():
    args, _ = sweep.parse_args(["--fuse", "--only", "attention,ema,dropout,schedule", "--seeds", "0,1,2",
                                "with", "smoke"])
    tasks = sweep.tasks_for(args, ["smoke"], sweep.store.resolve(None))
    jobs = {(tuple(sorted({t.cell for t in job})), tuple(sorted({t.seed for t in job})))
            for job in sweep.jobs_of(tasks)}
    assert jobs == {(("baseline", "ema=True", "schedule=linear"), (0, 1, 2)), (("attention=False",), (0, 1, 2)),
                    (("dropout=0.1",), (0,)), (("dropout=0.1",), (1,)), (("dropout=0.1",), (2,))}
    keys = {t.cell: t.key for t in tasks if t.seed == 0}
    plain, _ = sweep.parse_args(["--only", "attention,dropout", "--seeds", "0", "with", "smoke"])
    unfused = sweep.tasks_for(plain, ["smoke"], sweep.store.resolve(None))
    assert keys["dropout=0.1"] == {t.cell: t.key for t in unfused}["dropout=0.1"]  # alone: a plain sweep's cell
    assert keys["baseline"] != unfused[0].key and tasks[0].sweep_id != unfused[0].sweep_id


def test_fused_options_are_refused_where_they_cannot_hold(env, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--fuse", "--workers", "2", "--dry-run", "with", "smoke"])
    assert "invalid --fuse with --workers/--scheduler" in capsys.readouterr().err
    out = subprocess.run([sys.executable, str(REPO / "ablations" / "run.py"), "with", "smoke", "fused=True"],
                         env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "invalid fused=True with fused_checkpoint=None: valid is both or neither" \
        in out.stdout + out.stderr


def test_two_machines_sweeping_one_database_never_train_a_fused_member_twice(server, env, tmp_path):
    """Two sweeps of one fused group from two machines' local states (each its own ABLATIONS_HOME, one database),
    the second's seeds overlapping the first's: started while the first holds its members' cells, the second trains
    only its other seed and reports the held cells claimed elsewhere (a claim of the whole group, keyed by its
    members, let it train seed 0 again); the first trains its group once and stores both its cells."""
    args = ["--fuse", "--only", "ema", "-m", f"{server.url}/fusedrace", "with", "smoke", "threads=1", "train_steps=10"]
    homes = [tmp_path / "first", tmp_path / "second"]
    first = subprocess.Popen([sys.executable, str(REPO / "ablations" / "sweep.py"), "--seeds", "0", *args],
                             env=env | {"ABLATIONS_HOME": str(homes[0])}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    db = server.db("fusedrace")
    wait_for(lambda: db.sweep_claims.count_documents({"state": "running"}) == 2, 120,
             "the first sweep's claims on its group's two cells")
    second = run_sweep(["--seeds", "0,1", *args], env | {"ABLATIONS_HOME": str(homes[1])}, timeout=300)
    assert second.returncode == 0 and second.stdout.count("claimed elsewhere") == 2, second.stdout + second.stderr
    assert second.stdout.count("COMPLETED") == 2, second.stdout
    output = first.communicate(timeout=600)[0]
    assert first.returncode == 0 and output.count("COMPLETED") == 2, output[-3000:]
    assert db.runs.count_documents({"status": "COMPLETED"}) == db.runs.count_documents({}) == 4
    trained = {(d["config"]["seed"], d["info"]["fused"]["group"], tuple(d["info"]["fused"]["seeds"]))
               for d in db.runs.find()}
    assert len(trained) == 2 and {(seed, seeds) for seed, _, seeds in trained} == {(0, (0,)), (1, (1,))}
    assert {c["state"] for c in db.sweep_claims.find()} == {"done"}  # each run ended its cell's claim


def test_a_fused_group_whose_database_went_away_while_it_trained_is_run_later_from_its_checkpoints(server, env,
                                                                                                   tmp_path):
    """The database dies while a fused group trains: its cells are reported `database away` (no traceback), their
    members' checkpoints are kept, and the same command, once the database is back, runs each member from them
    without training the group again."""
    args = ["--fuse", "--only", "ema", "--seeds", "0", "-m", f"{server.url}/fusedaway", "with", "smoke", "threads=1",
            "train_steps=10"]
    env = env | {"ABLATIONS_HOME": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, str(REPO / "ablations" / "sweep.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: list(tmp_path.glob("fused/*/group.json")), 120, "the group's training")  # its cells claimed
    server.kill()
    try:
        output = proc.communicate(timeout=300)[0]
    finally:
        server.start()  # same port, same data
    assert proc.returncode == 1 and output.count("database away") == 2 and "ablations.store sync" in output, output
    kept = sorted(tmp_path.glob("fused/*/seed-0-cosine*.pt"))  # the EMA member and its EMA-off twin
    assert len(kept) == 2
    trained = {torch.load(path, weights_only=False)["extra"]["fused"]["group"] for path in kept}
    rerun = run_sweep(args, env, timeout=300)
    assert rerun.returncode == 0 and rerun.stdout.count("COMPLETED") == 2, rerun.stdout + rerun.stderr
    docs = list(server.db("fusedaway").runs.find())
    assert [d["status"] for d in docs] == ["COMPLETED"] * 2
    assert {d["info"]["fused"]["group"] for d in docs} == trained  # a training anew would be a group of its own
    assert not list(tmp_path.glob("fused/*/group.json"))  # every cell stored: the checkpoints have served
