"""Sweeps: plans, idempotence, atomic claims, Dask, packing, journal-only bundles and a killed run, against a real
server (fused sweeps: tests/test_fused_sweep.py)."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from ablations import cuda_mps, jobs
from ablations import plan as plans
from ablations import rescore, sweep, sweep_manifest
from ablations.record import FINAL_WEIGHTS, IMPORTED, SAMPLES
from analysis import audit, report
from analysis.report import setting
from analysis.reproduce import reproduce
from analysis.runs import from_mongo, import_dump, runs_table
from benchmarks import suite
from tests.helpers import REPO, SEQUENTIAL, deterministic, final_weights, journal_of, metrics_of, run_sweep, wait_for


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
    assert sweep.main(["--dry-run", "with", "smoke", "shedule=linear"]) == 2  # refused here, not in each run
    assert "invalid config key(s) shedule (shedule: did you mean schedule?)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        sweep.main(["--seeds", "0,x", "--dry-run", "with", "smoke"])
    assert exit_.value.code == 2 and "invalid seeds '0,x': valid values are comma-separated integers" in \
        capsys.readouterr().err
    with pytest.raises(SystemExit):  # seed 0 twice planned each of its runs twice
        sweep.main(["--seeds", "0,1,0", "--dry-run", "with", "smoke"])
    assert "invalid seeds '0,1,0': 0 is given twice; valid values are distinct" in capsys.readouterr().err
    for word, message in (("seed=3", "seed=3: the sweep sets seed for each run itself (give it as --seeds);"),
                          ("fused=True", "fused=True: the sweep sets fused for each run itself (give it as --fuse);"),
                          ("cell=x", "cell='x': the sweep sets cell for each run itself;")):
        assert sweep.main(["--dry-run", "with", "smoke", word]) == 2  # `with seed=3` ran seed 0, the sweep's own
        assert f"invalid `with` word {message}" in capsys.readouterr().err
    for option, value, least in (("--pack", "0", 1), ("--workers", "-1", 0)):
        with pytest.raises(SystemExit):
            sweep.main([option, value, "--dry-run", "with", "smoke"])
        assert f"invalid {option} '{value}': valid values are integers >= {least}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        sweep.main(["--mps", "--dry-run", "with", "smoke"])  # MPS without a pack
    assert "invalid --mps with --pack 1" in capsys.readouterr().err
    if not shutil.which(cuda_mps.CONTROL):
        with pytest.raises(SystemExit):
            sweep.main(["--pack", "2", "--mps", "--dry-run", "with", "smoke"])
        assert f"invalid --mps: {cuda_mps.CONTROL} is not on PATH" in capsys.readouterr().err


def test_a_baseline_that_holds_an_ablation_value_is_flipped_back_to_the_seeds():
    """A scale whose baseline has EMA on (as `gpu` may) gets the cell ema=False; every cell differs from the
    baseline in exactly its toggle, and the seed's baseline keeps its cells (and so its stored runs' keys)."""
    seed_cells = dict(plans.cells_of("ofat"))
    assert seed_cells["ema=True"] == {"ema": True} and "ema=False" not in seed_cells
    cells = plans.build("ofat", [0], ["smoke", "ema=True", "dropout=0.1"])
    names = [c.name for c in cells]
    assert names == ["baseline", "attention=False", "ema=False", "dropout=0.0", "schedule=linear", "amp=False"]
    base = cells[0].config.to_dict()
    for cell in cells[1:]:
        (toggle, value), = cell.overrides.items()
        assert {k for k, v in cell.config.to_dict().items() if base[k] != v} == {toggle}
        assert getattr(cell.config, toggle) == value
    full = [name for name, _ in plans.cells_of("full", ["attention", "ema"], cells[0].config)]
    assert full == ["baseline", "ema=False", "attention=False", "attention=False+ema=False"]


# a third of smoke's steps: what these tests compare (runs against their twins, records against records) needs
# no more; threads=1 last, which the packed test drops (the sweep gives each of its 2 runs one of the 2 cores)
def assert_same_runs(db, reference_db) -> None:
    """Every run of ``db`` equals its cell's run in ``reference_db``: results, metrics, weights (throughput aside)."""
    for doc in db.runs.find():
        twin = reference_db.runs.find_one({"info.config_hash": doc["info"]["config_hash"]})
        assert twin is not None and doc["result"] == twin["result"]
        assert deterministic(metrics_of(db, doc["_id"])) == deterministic(metrics_of(reference_db, twin["_id"]))
        assert all((a == b).all() for a, b in zip(final_weights(db, doc["_id"]).values(),
                                                  final_weights(reference_db, twin["_id"]).values()))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_gpu_sweep_is_planned_here_but_not_run(tmp_path):
    """The `gpu` scale names its device, so its cells get their GPU keys (fp16) here too; none is run here."""
    cells = plans.build("ofat", [0], ["gpu"], ["attention"])
    assert [c.precision for c in cells] == ["fp16", "fp16"]
    out = run_sweep(["--only", "attention", "--seeds", "0", "--journal-only", "with", "gpu"],
                    os.environ | {"ABLATIONS_HOME": str(tmp_path)})
    assert out.returncode == 1 and out.stdout.count("not run here") == 2
    assert "invalid device='cuda': no CUDA device is present here" in out.stderr
    assert not list(tmp_path.glob("journal/*/offline/[0-9]*"))  # nothing was started


def test_sequential_then_dask_same_results_and_idempotent(server, env, sequential_db):
    assert sequential_db.runs.count_documents({"status": "COMPLETED"}) == 2
    again = run_sweep(["-m", f"{server.url}/sequential", *SEQUENTIAL], env)
    assert again.returncode == 0 and again.stdout.count("stored") == 2
    assert sequential_db.runs.count_documents({}) == 2  # the second call ran nothing
    assert "FID  score     bpd   wall s" in again.stdout  # each cell's scores, its held-out bound among them
    for doc in sequential_db.runs.find():
        r = doc["result"]
        assert f"{r['fid']:.1f} {r['classifier_score']:6.2f} {r['nll_bpd']:7.2f}" in again.stdout, again.stdout

    dask = ["--only", "attention", "--seeds", "0", "--workers", "2", "-m", f"{server.url}/dask", "with", "smoke",
            "train_steps=10"]
    out = run_sweep(dask, env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    dask_db = server.db("dask")
    assert all(doc["config"]["threads"] == 1 for doc in dask_db.runs.find())  # 2 workers share 2 cores
    assert_same_runs(dask_db, sequential_db)
    assert dask_db.runs.count_documents({"status": "COMPLETED"}) == 2


def test_a_sweep_keeps_in_its_report_and_audit_the_cells_another_sweep_stored(server, env, sequential_db, tmp_path):
    """A cell COMPLETED by another sweep is skipped, yet it is in this sweep's export, report and audit, under
    this sweep's name for it; the stored document is not changed, and importing the export drops the mark."""
    url = f"{server.url}/borrowing"
    baseline = sequential_db.runs.find_one({"config.cell": "baseline", "config.seed": 0})
    import_dump(from_mongo(f"{server.url}/sequential", baseline["config"]["sweep_id"]), url)
    # with EMA on in the baseline, the cell ema=False is the config of the attention sweep's baseline
    words = ["--only", "ema", "--seeds", "0", "with", "smoke", "train_steps=10", "threads=1", "ema=True"]
    out = run_sweep(["-m", url, *words], env)
    assert out.returncode == 0 and out.stdout.count("stored") == 1 and out.stdout.count("COMPLETED") == 1, \
        out.stdout[-3000:] + out.stderr[-3000:]
    sid = run_sweep(["--print-id", *words], env).stdout.strip()
    assert sid != baseline["config"]["sweep_id"]
    docs = from_mongo(url, sid)
    lent = next(d for d in docs if d.get(sweep_manifest.MEMBER_OF))
    assert len(docs) == 2 and lent["_id"] == baseline["_id"] and lent["config"] == baseline["config"]
    assert lent[sweep_manifest.MEMBER_OF] == {"sweep_id": sid, "cell": "ema=False"}
    assert sweep_manifest.MEMBER_OF not in server.db("borrowing").runs.find_one({"_id": lent["_id"]})
    assert sorted(runs_table(docs).cell) == ["baseline", "ema=False"]

    assert report.main(["-m", url, "--sweep", sid, "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| ema=False |" in text and f"{baseline['config']['sweep_id']} (1 run)" in text
    import_dump(docs, f"{server.url}/imported")  # an export of the sweep, imported elsewhere: plain records
    imported = server.db("imported").runs.find_one({"_id": lent["_id"]})
    assert imported is not None and sweep_manifest.MEMBER_OF not in imported

    db = server.db("borrowing")
    assert audit.unfinished_cells(db, sid) == []
    # rescoring the sweep would take the run it found stored too (scored already: only with --force), but that
    # one was imported from a dump, which does not carry final weights; the audit does not count them lost
    assert [d["_id"] for d in rescore.selected(db, sid, None, force=True)] == [d["_id"] for d in docs if d is not lent]
    assert db.runs.find_one({"_id": lent["_id"]})[IMPORTED] == {"without": [SAMPLES, FINAL_WEIGHTS]}
    problems = {r["run_id"]: r["problems"] for r in audit.audit(db)}[lent["_id"]]
    assert not [p for p in problems if "artifacts" in p or "checkpoint" in p], problems
    said = []
    assert reproduce(db, lent["_id"], log=said.append) == 2 and said == [
        f"REFUSED: cannot reproduce run {lent['_id']}: its record holds no final weights (imported from a dump, which "
        "does not carry them; the database it came from holds them)"]
    assert rescore.selected(db, sid, None, force=False) == []
    with pytest.raises(ValueError, match="invalid sweep 'sw-typo'"):
        rescore.selected(db, "sw-typo", None, force=True)
    args, with_words = sweep.parse_args([*words[:2], "--seeds", "0,1", *words[4:]])
    sweep.record_manifest(sweep.tasks_for(args, with_words, sweep.store.resolve(url)), args, with_words,
                          sweep.store.resolve(url))  # the same sweep, extended to seed 1 (not run yet)
    unfinished = sorted((r["cell"], r["seed"]) for r in audit.unfinished_cells(db, sid))
    assert unfinished == [("baseline", 1), ("ema=False", 1)]
    assert report.main(["--mongo-url", url, "--sweep", sid, "--out", str(tmp_path / "report")]) == 0
    assert "baseline seed 1, ema=False seed 1" in (tmp_path / "report" / "report.md").read_text()  # says what it lacks


def test_packed_journal_only_sweep_travels_as_a_bundle_and_syncs_like_direct_runs(server, env, sequential_db,
                                                                                  tmp_path):
    """Made where no database answers (packed, journal-only), carried as bundle parts, synced at home: the
    records equal direct runs, a second sync adds nothing, and the sweep at home finds every cell stored."""
    away = env | {"ABLATIONS_HOME": str(tmp_path / "gpu-machine"), "ABLATIONS_MONGO_URL": "mongodb://127.0.0.1:9"}
    started = time.monotonic()
    packed = run_sweep(["--pack", "2", "--journal-only", *SEQUENTIAL[:-1]], away)  # threads: 2 cores / pack 2 = 1
    packed_s = time.monotonic() - started
    assert packed.returncode == 0 and packed.stdout.count("COMPLETED") == 2, packed.stdout[-3000:] + packed.stderr
    again = run_sweep(["--pack", "2", "--journal-only", *SEQUENTIAL[:-1]], away)
    assert again.returncode == 0 and again.stdout.count("stored") == 2  # idempotent without a database too
    # what benchmarks/suite.py says of a pack: each phase's median, and the sweep's wall a run
    phases = suite.phase_medians(tmp_path / "gpu-machine", sweep_s=10.0)
    assert set(phases) == {"train", "sample", "evaluate", "heldout", "run", "process"} and phases["process"] == 5.0
    assert 0 < phases["train"] + phases["sample"] + phases["evaluate"] + phases["heldout"] < phases["run"]

    store_cli = [sys.executable, "-m", "ablations.store"]
    too_small = subprocess.run([*store_cli, "bundle", str(tmp_path / "out"), "--part-mib", "2"], env=away,
                               capture_output=True, text=True, cwd=REPO)
    assert too_small.returncode == 2 and "more than a part may (2 MiB)" in too_small.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was written
    bundled = subprocess.run([*store_cli, "bundle", str(tmp_path / "out"), "--part-mib", "6"], env=away,
                             capture_output=True, text=True, cwd=REPO)
    parts = sorted((tmp_path / "out").glob("journal-*.tar.xz"))
    assert bundled.returncode == 0 and len(parts) == 2, bundled.stdout + bundled.stderr  # one run per 6 MiB part
    assert all(p.stat().st_size <= 6 * 2**20 for p in parts)

    home = env | {"ABLATIONS_HOME": str(tmp_path / "home")}
    carried = f"{server.url}/carried"
    for attempt in range(2):
        synced = subprocess.run([*store_cli, "sync", *map(str, parts), "-m", carried], env=home,
                                capture_output=True, text=True, cwd=REPO)
        assert synced.returncode == 0 and synced.stdout.count("inserted") == (2 if attempt == 0 else 0), synced.stdout
    db = server.db("carried")
    assert db.runs.count_documents({}) == 2 and db.runs.count_documents({"status": "COMPLETED"}) == 2
    sid = sequential_db.runs.find_one()["config"]["sweep_id"]  # the sweep's manifest travelled with its runs
    assert db.sweeps.find_one({"_id": sid})["cells"] == sequential_db.sweeps.find_one({"_id": sid})["cells"]
    assert_same_runs(db, sequential_db)  # packed equals solo, bit for bit
    assert all(audit.check_consistency(db, doc) == [] for doc in db.runs.find())
    for doc in db.runs.find():
        twin = sequential_db.runs.find_one({"info.config_hash": doc["info"]["config_hash"]})
        assert set(doc) == set(twin) and set(doc["info"]) == set(twin["info"])
        assert sorted(a["name"] for a in doc["artifacts"]) == sorted(a["name"] for a in twin["artifacts"])
        assert (doc["info"]["pack"], twin["info"]["pack"]) == (2, 1)
        assert (doc["info"]["sitting"]["pack"], twin["info"]["sitting"]["pack"]) == (2, 1)
    # the suite's wall time is in its records: one sitting, from the sweep's start to its last run's stop
    assert len({doc["info"]["sitting"]["id"] for doc in db.runs.find()}) == 1
    wall = setting(runs_table(list(db.runs.find())))["wall time"]
    minutes = float(re.match(r"2 runs in ([\d.]+) min on cpu \(.+, packed 2; started ", wall).group(1))
    assert 0 < minutes <= packed_s / 60 + 0.05, (wall, packed_s)  # the sweep's process starts after the clock
    home_sweep = run_sweep(["-m", carried, *SEQUENTIAL], home)
    assert home_sweep.returncode == 0 and home_sweep.stdout.count("stored") == 2
    assert db.runs.count_documents({}) == 2


def test_two_sweeps_at_once_never_run_a_cell_twice(server, env):
    args = ["--only", "attention", "--seeds", "3", "-m", f"{server.url}/race", "with", "smoke", "threads=1",
            "train_steps=10"]
    procs = [subprocess.Popen([sys.executable, str(REPO / "ablations" / "sweep.py"), *args], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    db = server.db("race")
    assert db.runs.count_documents({}) == 2 and db.runs.count_documents({"status": "COMPLETED"}) == 2


def test_what_a_completed_run_warned_of_reaches_the_sweeps_output(server, env):
    """A run's warnings were shown only for a failed run; here the first run moves aside a journal folder under its
    id (a database whose runs were deleted, its identity kept), and the sweep says so."""
    server.db("warned").journal_identity.insert_one({"_id": "journal", "identity": "kept"})
    stale = Path(env["ABLATIONS_HOME"]) / "journal" / "warned" / "db-kept" / "1"
    stale.mkdir(parents=True)
    (stale / "run.json").write_text("{}")
    out = run_sweep(["-m", f"{server.url}/warned", *SEQUENTIAL], env)
    assert out.returncode == 0 and out.stdout.count("COMPLETED") == 2, out.stdout[-3000:] + out.stderr[-3000:]
    assert "cell baseline seed 0: WARNING: the journal held a run under id 1" in out.stderr, out.stderr[-3000:]
    assert len(list((stale.parent / "_displaced").iterdir())) == 1


def test_a_run_that_outlived_a_database_outage_is_uploaded_by_its_sweep_not_run_again(server, env):
    """The database dies during a sweep's first run and is back when the run has ended in the journal: the sweep
    uploads that run from the journal and goes on (it took the database's record, RUNNING, for a failure and ran
    the cell again, so that a later sync left the cell stored twice)."""
    args = ["-m", f"{server.url}/outage", "--only", "attention", "--seeds", "0", "with", "smoke", "threads=1",
            "train_steps=60"]
    proc = subprocess.Popen([sys.executable, str(REPO / "ablations" / "sweep.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: (journal_of(server, env["ABLATIONS_HOME"], "outage") / "1" / "cout.txt").exists(), 120,
             "the first run")
    first = journal_of(server, env["ABLATIONS_HOME"], "outage") / "1"
    time.sleep(2)  # into its training
    server.kill()
    try:
        wait_for(lambda: '"COMPLETED"' in ((first / "run.json").read_text() if (first / "run.json").exists() else ""),
                 300, "the first run to complete in the journal")
    finally:
        server.start()  # same port, same data
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and "run 1: the database missed part of it; updated from" in output, output[-3000:]
    assert "cell baseline seed 0: WARNING: the database at" in output and f"in the journal ({first})" in output
    db = server.db("outage")
    assert [(r["_id"], r["status"]) for r in db.runs.find(sort=[("_id", 1)])] == [(1, "COMPLETED"), (2, "COMPLETED")]
    assert len(metrics_of(db, 1)["train.loss"][0]) == 60 // 5


def test_a_cell_whose_database_went_away_is_reported_and_starts_no_run(capsys):
    """A database that stops answering mid-sweep: each cell or fused group left gives rows and a line, not a
    traceback that ends the sweep with its runs under way (the fetch after a run waits for it first, as in the test
    above)."""
    args, words = sweep.parse_args(["-m", "mongodb://127.0.0.1:9/away", "--only", "attention", "--seeds", "0",
                                    "with", "smoke"])
    task = sweep.tasks_for(args, words, sweep.store.resolve(args.mongo))[0]
    row = jobs.run_cell(task)
    assert row["status"] == jobs.DATABASE_AWAY and row["run_id"] is None
    assert "cell baseline seed 0: the database went away" in capsys.readouterr().err
    fused, words = sweep.parse_args(["--fuse", "-m", "mongodb://127.0.0.1:9/away", "--only", "attention", "--seeds",
                                     "0,1", "with", "smoke"])
    group = jobs.jobs_of(sweep.tasks_for(fused, words, sweep.store.resolve(fused.mongo)))[0]  # the baseline's seeds
    assert len(group) == 2 and [row["status"] for row in jobs.run_job(group)] == [jobs.DATABASE_AWAY] * 2
    assert "cell baseline fused: the database went away" in capsys.readouterr().err


def test_a_database_made_anew_during_a_sweep_takes_in_none_of_the_old_ones_runs(server, tmp_path, monkeypatch):
    """A sweep asks the database its identity before each cell: deleted between two cells and made anew, the database
    gets the second cell's run alone. (The sweep read the identity once a process, so after the second run it read
    the old journal's run of the same id and uploaded it into the new database: the old database's run there.)"""
    monkeypatch.setenv("ABLATIONS_HOME", str(tmp_path))
    args, words = sweep.parse_args(["-m", f"{server.url}/anew", "--only", "attention", "--seeds", "0", "with", "smoke",
                                    "train_steps=10", "threads=1"])
    first, second = sweep.tasks_for(args, words, sweep.store.resolve(args.mongo))  # baseline, attention=False
    assert jobs.run_cell(first)["status"] == "COMPLETED"
    old = journal_of(server, tmp_path, "anew")
    server.db("anew").client.drop_database("anew")  # deleted: the next process to ask makes it anew
    row = jobs.run_cell(second)
    assert (row["status"], row["run_id"]) == ("COMPLETED", 1)
    assert [(d["_id"], d["config"]["cell"]) for d in server.db("anew").runs.find()] == [(1, "attention=False")]
    assert journal_of(server, tmp_path, "anew") != old and json.loads((old / "1" / "config.json").read_text())[
        "cell"] == "baseline"  # the old database's run stays in its own journal


def test_a_stopped_sweep_leaves_its_runs_interrupted_and_starts_no_other(server, env):
    """SIGTERM to the sweep alone (as `kill` sends it): the two runs under way checkpoint and end INTERRUPTED, neither
    is retried, the cell still queued never starts, and the same command would resume both from their checkpoints."""
    args = ["--only", "attention,schedule", "--seeds", "5", "--pack", "2", "-m", f"{server.url}/stopped",
            "with", "smoke", "train_steps=2000", "checkpoint_every=10"]
    proc = subprocess.Popen([sys.executable, str(REPO / "ablations" / "sweep.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: len(list(journal_of(server, env["ABLATIONS_HOME"], "stopped").glob("*/checkpoint.pt"))) == 2,
             180, "two runs with a checkpoint")
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 1 and "Stopped: 2 runs INTERRUPTED, 1 not started" in output, output[-3000:]
    assert re.search(r"schedule=linear\s+5\s+not started", output)
    db = server.db("stopped")
    runs = list(db.runs.find())
    assert [r["status"] for r in runs] == ["INTERRUPTED", "INTERRUPTED"]
    assert {r["config"]["cell"] for r in runs} == {"baseline", "attention=False"}
    assert db.sweep_claims.count_documents({"state": "running"}) == 0  # the stopped cells are free to run again
    journal = journal_of(server, env["ABLATIONS_HOME"], "stopped")
    for r in runs:
        assert jobs._resumable(r["info"]["config_hash"], journal) == r["_id"]


def test_killed_run_is_retried_from_its_checkpoint(server, env):
    args = ["--only", "attention", "--seeds", "4", "--workers", "2", "-m", f"{server.url}/killed",
            "with", "smoke", "train_steps=60", "checkpoint_every=10"]
    proc = subprocess.Popen([sys.executable, str(REPO / "ablations" / "sweep.py"), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    def baseline_checkpointed():
        journal = journal_of(server, env["ABLATIONS_HOME"], "killed")
        return any('"baseline"' in (d / "config.json").read_text() for d in journal.glob("*")
                   if (d / "checkpoint.pt").exists() and (d / "config.json").exists())

    def victim():  # among this sweep's own processes: a test in the other worker may be running a baseline too
        for p in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a process that ended while we looked
                if "cell='baseline'" in " ".join(p.cmdline()) and baseline_checkpointed():
                    return p
        return None

    wait_for(lambda: victim() is not None, 180, "a run with a checkpoint")
    victim().kill()  # SIGKILL the baseline cell's run mid-training
    output = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-3000:]
    db = server.db("killed")
    completed = list(db.runs.find({"status": "COMPLETED"}))
    assert len(completed) == 2 and any(d["info"]["resumed_from"] is not None for d in completed)
    assert all(audit.check_consistency(db, d) == [] for d in completed)  # a resumed run agrees with itself
