"""Sweeps: plans, idempotence, atomic claims, Dask execution and a killed run, against a real server."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from ablations import sweep
from tests.helpers import deterministic, final_weights, metrics_of, wait_for

REPO = Path(__file__).resolve().parent.parent


def run_sweep(args: list[str], env: dict, **kwargs):
    return subprocess.run([sys.executable, str(REPO / "ablations" / "sweep.py"), *args], env=env,
                          capture_output=True, text=True, **kwargs)


@pytest.mark.parametrize("plan, seeds, configs", [("ofat", "0,1", 6), ("full", "0,1,2", 32)])
def test_dry_run_plans(plan, seeds, configs, capsys):
    assert sweep.main(["--plan", plan, "--seeds", seeds, "--dry-run", "with", "smoke"]) == 0
    lines = capsys.readouterr().out.splitlines()
    n = configs * len(seeds.split(","))
    assert f"{configs} configs x {len(seeds.split(','))} seeds = {n} runs" in lines[0]
    assert len(lines) == 1 + n and len({line.split("with")[1] for line in lines[1:]}) == n


def test_only_and_bad_values(capsys):
    assert sweep.main(["--plan", "full", "--only", "attention,ema", "--dry-run", "with", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "4 configs x 1 seeds" in out and "attention=False+ema=True" in out
    assert sweep.main(["--only", "attention", "--print-id", "with", "smoke"]) == 0
    assert capsys.readouterr().out.strip().startswith("sw-")
    assert sweep.main(["--only", "emma", "--dry-run", "with", "smoke"]) == 2
    assert sweep.main(["--dry-run", "with", "smoke", "schedule=cosin"]) == 2
    assert "invalid schedule='cosin'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--seeds", "0,x", "--dry-run", "with", "smoke"])
    assert exit_.value.code == 2 and "invalid seeds '0,x': valid values are comma-separated integers" in \
        capsys.readouterr().err


def test_sequential_then_dask_same_results_and_idempotent(server, env):
    seq = ["--only", "attention", "--seeds", "0", "-m", f"{server.url}/sequential", "with", "smoke", "threads=1"]
    first = run_sweep(seq, env)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    seq_db = server.db("sequential")
    assert seq_db.runs.count_documents({"status": "COMPLETED"}) == 2
    again = run_sweep(seq, env)
    assert again.returncode == 0 and again.stdout.count("stored") == 2
    assert seq_db.runs.count_documents({}) == 2  # the second call ran nothing

    dask = ["--only", "attention", "--seeds", "0", "--workers", "2", "-m", f"{server.url}/dask", "with", "smoke"]
    out = run_sweep(dask, env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    dask_db = server.db("dask")
    for doc in dask_db.runs.find():
        twin = seq_db.runs.find_one({"info.config_hash": doc["info"]["config_hash"]})
        assert doc["config"]["threads"] == twin["config"]["threads"] == 1  # 2 workers share 2 cores
        assert deterministic(metrics_of(dask_db, doc["_id"])) == deterministic(metrics_of(seq_db, twin["_id"]))
        assert all((a == b).all() for a, b in zip(final_weights(dask_db, doc["_id"]).values(),
                                                  final_weights(seq_db, twin["_id"]).values()))
    assert dask_db.runs.count_documents({"status": "COMPLETED"}) == 2


def test_two_sweeps_at_once_never_run_a_cell_twice(server, env):
    args = ["--only", "attention", "--seeds", "3", "-m", f"{server.url}/race", "with", "smoke", "threads=1"]
    procs = [subprocess.Popen([sys.executable, str(REPO / "ablations" / "sweep.py"), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    db = server.db("race")
    assert db.runs.count_documents({}) == 2 and db.runs.count_documents({"status": "COMPLETED"}) == 2


def test_killed_run_is_retried_from_its_checkpoint(server, env):
    args = ["--only", "attention", "--seeds", "4", "--workers", "2", "-m", f"{server.url}/killed",
            "with", "smoke", "train_steps=60", "checkpoint_every=10"]
    proc = subprocess.Popen([sys.executable, str(REPO / "ablations" / "sweep.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    journal = Path(env["ABLATIONS_HOME"]) / "journal" / "killed"

    def baseline_checkpointed():
        return any('"baseline"' in (d / "config.json").read_text() for d in journal.glob("*")
                   if (d / "checkpoint.pt").exists() and (d / "config.json").exists())

    def victim():
        for p in psutil.process_iter(["cmdline"]):
            if "cell='baseline'" in " ".join(p.info["cmdline"] or []) and baseline_checkpointed():
                return p
        return None

    wait_for(lambda: victim() is not None, 180, "a run with a checkpoint")
    victim().kill()  # SIGKILL the baseline cell's run mid-training
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    db = server.db("killed")
    completed = list(db.runs.find({"status": "COMPLETED"}))
    assert len(completed) == 2 and any(d["info"]["resumed_from"] is not None for d in completed)
