"""The Sacred experiment and the run store, end to end against a real SecantusDB server."""
from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pymongo
import pytest
import torch

from ablations.record import ARTIFACTS, METRICS, non_plain
from tests.helpers import (REPO, Server, deterministic, experiment, final_weights, journal_of, metrics_of, refusal,
                           run_env, run_id, start_experiment, wait_for)

SMOKE = ["with", "smoke", "threads=1"]
LONGER = ["with", "smoke", "threads=1", "train_steps=60", "checkpoint_every=10"]  # time to interrupt it


@pytest.fixture(scope="module")
def reference(server, env):
    """An uninterrupted LONGER run: what the outage and resume tests must reproduce."""
    out = experiment(LONGER, env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return run_id(out.stderr + out.stdout)


def test_smoke_run_is_stored_complete(server, env):
    out = experiment(SMOKE + ["attention=False"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    db = server.db()
    doc = db.runs.find_one({"_id": run_id(out.stderr)})
    assert doc["status"] == "COMPLETED" and doc["config"]["attention"] is False
    assert set(doc["result"]) >= {"fid", "kid_mean", "precision", "recall"} and doc["result"]["fid"] > 0
    assert {m["name"] for m in doc["info"]["metrics"]} == set(METRICS) == set(metrics_of(db, doc["_id"]))
    assert len(metrics_of(db, doc["_id"])["train.loss"][0]) == 30 // 5  # one point per log_every steps
    assert {a["name"] for a in doc["artifacts"]} == set(ARTIFACTS)
    info = doc["info"]
    assert info["mnist_sha256"]["train"].startswith("741c9888") and len(info["classifier_sha256"]) == 64
    assert info["param_count"] == 1_176_001 and info["git"]["commit"] and "train" in info["wall_time_s"]
    assert info["environment"]["torch"] == str(torch.__version__) and info["environment"]["packages"]["torch"]
    # Plain JSON only: no pickled objects (jsonpickle's py/object, py/function, ...) anywhere in the document.
    assert "py/" not in repr(doc)
    assert non_plain(doc["config"]) == non_plain(doc["info"]) == non_plain(doc["result"]) == []
    assert non_plain({"torch": {"py/object": "torch.torch_version.TorchVersion"}}) == [".torch.py/object"]


def test_same_config_and_seed_store_identical_metrics(server, env, reference):
    again = experiment(LONGER, env)
    assert again.returncode == 0, again.stderr[-3000:]
    db = server.db()
    first, second = metrics_of(db, reference), metrics_of(db, run_id(again.stderr))
    assert deterministic(first) == deterministic(second)
    assert all(torch.equal(a, b) for a, b in zip(final_weights(db, reference).values(),
                                                  final_weights(db, run_id(again.stderr)).values()))


@pytest.mark.parametrize("update, message", [
    ("schedule=cosin", "invalid schedule='cosin': valid values are 'cosine' or 'linear'"),
    ("dropout=1.5", "invalid dropout=1.5"),
    ("sampler=fast", "invalid sampler='fast': valid values are 'ancestral' or 'ddim'"),
    ("checkpoint_every=7", "invalid checkpoint_every=7"),
    ("n_samples=3", "invalid n_samples=3: valid values are an integer >= 4"),  # precision/recall's k-NN
    ("resume=77", "invalid resume=77: no journaled run with a checkpoint"),  # checked once the database answers
    ("atention=False", "invalid config key(s) atention (atention: did you mean attention?): valid keys are the "
                       "Config fields amp, attention"),  # refused by name before Sacred (which names no valid key)
])
def test_bad_values_fail_before_any_run_is_stored(server, env, update, message, monkeypatch, capfd):
    """Two cases run the script as a user does (one is checked once the database answers); the others call its
    main in this process."""
    before = server.db().runs.count_documents({})
    code, err = refusal(["with", "smoke", update], env, update in ("schedule=cosin", "resume=77"), monkeypatch, capfd)
    assert code == 2 and message in err and "Traceback" not in err, err  # one line
    assert server.db().runs.count_documents({}) == before


@pytest.mark.parametrize("args, message", [
    (["with", "smoke", "lrr=1e-3"], "invalid config key(s) lrr (lrr: did you mean lr?)"),
    (["with", "smoke", "sampler='foo'"], "invalid sampler='foo': valid values are 'ancestral' or 'ddim'"),
    (["with", "smok"], "invalid named config 'smok': valid values are smoke, small, paper, gpu or an existing "
                               "config file"),
    (["smoke"], "invalid command 'smoke': valid commands are print_config,"),  # `with` forgotten
])
def test_a_bad_key_value_or_command_is_refused_before_the_database_is_reached(tmp_path, args, message, monkeypatch,
                                                                            capfd):
    """The database named is down, and the error is the command line's, in one line: no server is reached (nor
    the embedded one started) for a typo. The named-config typo runs the script; the others call its main."""
    dead = run_env("mongodb://127.0.0.1:9/ablations", tmp_path)
    code, err = refusal(args, dead, args == ["with", "smok"], monkeypatch, capfd)
    assert code == 2 and message in err and "Traceback" not in err, err
    assert "no MongoDB answers" not in err and not (tmp_path / "journal").exists()


@pytest.mark.parametrize("args", [["--help"], ["help", "print_config"]])
def test_help_is_printed_without_a_database(tmp_path, args):
    out = experiment(args, run_env("mongodb://127.0.0.1:9/ablations", tmp_path), timeout=60)
    assert out.returncode == 0 and ("Usage:" in out.stdout or "print_config" in out.stdout), out.stderr
    assert "no MongoDB answers" not in out.stderr and not (tmp_path / "journal").exists()


def test_database_down_at_start_is_a_clear_fast_error(env, tmp_path):
    dead = run_env("mongodb://user:s3cret@127.0.0.1:9/ablations", tmp_path)
    started = time.monotonic()
    out = experiment(SMOKE, dead, timeout=60)
    # Fast: within the store's own 5 s wait, not pymongo's default 30 s of server selection, which alone would take
    # longer than this bound. The process's start-up (imports) is the rest: 10 s under three test workers, so a
    # tighter bound failed on a slow hour (15.02 s against 15).
    assert out.returncode == 2 and time.monotonic() - started < 30
    assert "no MongoDB answers at mongodb://user:***@127.0.0.1:9" in out.stderr and "--journal-only" in out.stderr
    assert "s3cret" not in out.stderr + out.stdout and not (tmp_path / "journal").exists()  # nothing ran


def test_journal_only_then_sync_twice_without_duplicates(server, env):
    out = experiment(["--journal-only", *SMOKE, "seed=5"], env)
    assert out.returncode == 0, out.stderr[-3000:]
    db = server.db()
    assert db.runs.count_documents({"config.seed": 5}) == 0
    sync = [sys.executable, "-m", "ablations.store", "sync"]
    first = subprocess.run(sync, env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert first.returncode == 0 and "inserted" in first.stdout, first.stdout + first.stderr
    second = subprocess.run(sync, env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    assert "inserted" not in second.stdout and "updated" not in second.stdout
    docs = list(db.runs.find({"config.seed": 5}))
    assert len(docs) == 1 and docs[0]["status"] == "COMPLETED" and len(docs[0]["artifacts"]) == 3
    assert len(metrics_of(db, docs[0]["_id"])["train.loss"][0]) == 6


def test_server_killed_mid_run_then_synced_loses_nothing(server, env, reference):
    proc, rid = start_experiment(LONGER, env)
    time.sleep(3)  # into the training loop
    server.kill()  # SIGKILL the database mid-run
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]  # training went on and finished
    assert "ablations.store sync" in output
    server.start()  # same port, same data
    db = server.db()
    assert db.runs.find_one({"_id": rid})["status"] != "COMPLETED" or len(metrics_of(db, rid)) < 9
    sync = subprocess.run([sys.executable, "-m", "ablations.store", "sync"], env=env, capture_output=True,
                          text=True, cwd=Path(__file__).parent.parent)
    assert sync.returncode == 0, sync.stdout + sync.stderr
    doc = db.runs.find_one({"_id": rid})
    assert doc["status"] == "COMPLETED" and len(doc["artifacts"]) == 3
    assert deterministic(metrics_of(db, rid)) == deterministic(metrics_of(db, reference))
    assert db.runs.count_documents({"info.run_uuid": doc["info"]["run_uuid"]}) == 1


def test_sigkill_then_resume_equals_uninterrupted(server, env, reference, tmp_path):
    proc, rid = start_experiment(LONGER, env)
    checkpoint = journal_of(server, env["ABLATIONS_HOME"]) / str(rid) / "checkpoint.pt"
    wait_for(checkpoint.exists, 120, "the first checkpoint")
    time.sleep(1.5)
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    resumed = experiment(["with", f"resume={rid}"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming run" in resumed.stdout + resumed.stderr
    db = server.db()
    new = run_id(resumed.stderr)
    assert db.runs.find_one({"_id": new})["info"]["resumed_from"] == rid
    assert deterministic(metrics_of(db, new)) == deterministic(metrics_of(db, reference))
    assert all(torch.equal(a, b) for a, b in zip(final_weights(db, new).values(),
                                                  final_weights(db, reference).values()))


def test_sigterm_checkpoints_leaves_the_run_interrupted_and_resumes_exactly(server, env, reference):
    proc, rid = start_experiment(LONGER, env)
    time.sleep(4)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and "Interrupted at step" in output
    assert server.db().runs.find_one({"_id": rid})["status"] == "INTERRUPTED"
    assert (journal_of(server, env["ABLATIONS_HOME"]) / str(rid) / "checkpoint.pt").exists()
    # The final checkpoint holds the losses of the steps since the last log point, so the resumed
    # run logs the same loss means as an uninterrupted one.
    resumed = experiment(["with", f"resume={rid}"], env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    db = server.db()
    assert deterministic(metrics_of(db, run_id(resumed.stderr))) == deterministic(metrics_of(db, reference))


# A run whose SIGTERM arrives while a weakref callback runs (as an import's module locks' do): the handler's raise
# is printed and dropped by Python, as a stop landing in an import during a fused group's set-up was.
LOSE_A_STOP = """
import signal, sys, weakref
from ablations import run

class Doomed:
    pass

@run.ex.pre_run_hook
def lose_a_stop():
    doomed = Doomed()
    ref = weakref.ref(doomed, lambda _: signal.raise_signal(signal.SIGTERM))
    del doomed
    print("the run goes on:", ref() is None, flush=True)

sys.exit(run.cli(["run.py", *sys.argv[1:]]))
"""


def test_a_stop_whose_raise_was_lost_in_the_start_up_still_stops_the_run(server, env):
    out = subprocess.run([sys.executable, "-c", LOSE_A_STOP, *SMOKE], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert "Exception ignored" in out.stderr and "Terminated" in out.stderr, out.stderr[-3000:]  # lost where it landed
    assert "the run goes on: True" in out.stdout, out.stdout[-3000:]
    rid = run_id(out.stderr)
    assert out.returncode == 1 and "Interrupted at step 0" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
    assert server.db().runs.find_one({"_id": rid})["status"] == "INTERRUPTED"
    assert (journal_of(server, env["ABLATIONS_HOME"]) / str(rid) / "checkpoint.pt").exists()


def test_four_concurrent_runs_lose_no_metric_point(server, env):
    # a loss point at every one of 10 steps: more writes at once than smoke's 6 points of 30 steps, in less time
    words = ["with", "smoke", "threads=1", "train_steps=10", "log_every=1"]
    procs = [experiment([*words, f"seed={10 + i}"], env, background=True) for i in range(4)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    ids = [run_id(o) for o in outputs]
    assert len(set(ids)) == 4
    db = server.db()
    for rid in ids:
        metrics = metrics_of(db, rid)
        assert len(metrics["train.loss"][0]) == 10 and set(metrics) == set(METRICS)
        assert db.runs.find_one({"_id": rid})["status"] == "COMPLETED"


def test_two_databases_of_one_name_never_share_a_journal_nor_take_in_each_others_runs(server, tmp_path):
    """Two servers, a database of one name on each, one home: each database keeps its own journal (so the ids they
    both give out name no folder twice), and `sync` into one uploads none of the other's runs (it did: the journal
    was named by the database's name alone, so the other server's runs were inserted). Another journal is uploaded
    only when asked for by name (`sync --adopt`), as are the runs journaled before databases had an identity."""
    other = Server(tmp_path / "other").start()
    try:
        for url in (server.url, server.url, other.url):
            out = experiment(SMOKE, run_env(f"{url}/shared", tmp_path))
            assert out.returncode == 0 and "WARNING" not in out.stderr, out.stderr[-3000:]
        first, second = journal_of(server, tmp_path, "shared"), journal_of(other, tmp_path, "shared")
        assert first != second and sorted(d.name for d in first.iterdir() if d.name.isdigit()) == ["1", "2"]
        assert [d.name for d in second.iterdir() if d.name.isdigit()] == ["1"]

        def store(url, *args):
            return subprocess.run([sys.executable, "-m", "ablations.store", *args], env=run_env(f"{url}/shared",
                                  tmp_path), capture_output=True, text=True, cwd=Path(__file__).parent.parent)

        for url, db in ((other.url, other.db("shared")), (server.url, server.db("shared"))):
            synced = store(url, "sync")
            assert synced.returncode == 0 and "inserted" not in synced.stdout, synced.stdout + synced.stderr
            assert synced.stdout.count("in sync") == db.runs.count_documents({"status": "COMPLETED"})
        assert other.db("shared").runs.count_documents({}) == 1 and server.db("shared").runs.count_documents({}) == 2
        # Rebuilding a lost database from another's journal is asked for by name, and `status` names what there is.
        assert str(first) in store(other.url, "status").stdout
        refused = store(other.url, "sync", "--adopt", str(tmp_path / "nothing"))
        assert refused.returncode == 2 and "invalid --adopt" in refused.stderr and str(first) in refused.stderr
        adopted = store(other.url, "sync", "--adopt", str(first))
        assert adopted.returncode == 0 and adopted.stdout.count("inserted") == 2, adopted.stdout + adopted.stderr
        assert other.db("shared").runs.count_documents({"status": "COMPLETED"}) == 3
        assert "inserted" not in store(other.url, "sync", "--adopt", str(first)).stdout  # twice changes nothing
        # A run journaled before databases had an identity (journal/<db>/<id>/) belongs to none that can be told.
        legacy = shutil.copytree(first / "1", tmp_path / "journal" / "shared" / "9")
        info = json.loads((legacy / "info.json").read_text())
        (legacy / "info.json").write_text(json.dumps(info | {"run_uuid": "a-run-of-before"}))
        assert "inserted" not in store(other.url, "sync").stdout
        assert str(legacy.parent) in store(other.url, "status").stdout
        assert store(other.url, "sync", "--adopt", str(legacy.parent)).stdout.count("inserted") == 1
    finally:
        other.kill()


def test_processes_asking_a_new_database_its_identity_at_once_all_get_the_one_it_keeps(server):
    """The identity names the journal, so every process must read the same one (a sweep's runs start together)."""
    from ablations.store import Target, identity

    for db in ("ask0", "ask1", "ask2", "ask3", "ask4"):
        target, answers, barrier = Target(server.url, db, explicit=True), [], threading.Barrier(6)

        def ask():
            barrier.wait()
            answers.append(identity(target))

        threads = [threading.Thread(target=ask) for _ in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(answers) == 6 and set(answers) == {server.db(db).journal_identity.find_one()["identity"]}


def test_a_journal_that_outlived_its_runs_fails_no_new_run(server, tmp_path):
    """A database whose runs were deleted but not its identity gives out ids that name old runs' folders in its
    journal: the old folder is moved aside, not overwritten, and the new run completes (it failed on Sacred's
    FileExistsError, and its retries with it)."""
    server.db("reset").journal_identity.insert_one({"_id": "journal", "identity": "kept"})
    old = tmp_path / "journal" / "reset" / "db-kept" / "1"
    old.mkdir(parents=True)
    (old / "run.json").write_text('{"status": "an older run"}')
    out = experiment(SMOKE, run_env(f"{server.url}/reset", tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    assert run_id(out.stderr + out.stdout) == 1 and json.loads((old / "run.json").read_text())["status"] == "COMPLETED"
    displaced, = (old.parent / "_displaced").iterdir()
    assert (displaced / "run.json").read_text() == '{"status": "an older run"}'
    assert "WARNING: the journal held a run under id 1" in out.stderr and str(displaced) in out.stderr
    assert server.db("reset").runs.count_documents({"status": "COMPLETED"}) == 1


def test_store_cli_start_status_stop(tmp_path):
    """The store's commands, each in a process that never imports torch (they read records, never weights: a
    `status` took 2 s more with it); a `status` changes nothing in the database, not even its identity."""
    url = f"mongodb://127.0.0.1:{Server(tmp_path).port}"
    port_env, cwd = run_env(url, tmp_path), Path(__file__).parent.parent

    def store(*args):
        command = "import runpy, sys\ntry: runpy.run_module('ablations.store', run_name='__main__', alter_sys=True)\n" \
                  "finally: assert 'torch' not in sys.modules, 'the store imported torch'"
        return subprocess.run([sys.executable, "-c", command, *args],
                              env=port_env, capture_output=True, text=True, cwd=cwd, timeout=60)

    assert "Started the embedded" in store("start").stdout
    status = store("status")
    assert "answers" in status.stdout and "running, PID" in status.stdout, status.stdout + status.stderr
    assert "journaled no run yet" in status.stdout
    with pymongo.MongoClient(url) as client:
        assert client["ablations"].list_collection_names() == []
    assert "Stopped the embedded server" in store("stop").stdout
    assert "does not answer" in store("status").stdout
    synced = store("sync")  # its explicit URL does not answer: one line, not a traceback
    assert synced.returncode == 2 and synced.stderr.startswith("ERROR: no MongoDB answers at"), synced.stderr
    misplaced = store("status", "--adopt", str(tmp_path))
    assert misplaced.returncode == 2 and "invalid --adopt for status" in misplaced.stderr


def test_redact_hides_passwords():
    from ablations.store import parse, redact

    assert redact("mongodb://alice:pa:ss@db.example:27017/x") == "mongodb://alice:***@db.example:27017/x"
    assert redact("mongodb://db.example:27017") == "mongodb://db.example:27017"
    assert parse("mongodb://h:1/mydb") == ("mongodb://h:1", "mydb") and parse("h:2:db") == ("mongodb://h:2", "db")
    with pytest.raises(ValueError, match="valid forms"):
        parse("a:b")


def database_clis() -> dict:
    """Every command line that reaches a database: its main function and words it would otherwise run with, which
    take ``-m URL`` after their first."""
    from ablations import rescore, store, sweep
    from analysis import audit, report, runs

    return {"ablations.store": (store.main, ["status"]), "sweep.py": (sweep.main, ["--dry-run", "with", "smoke"]),
            "ablations.rescore": (rescore.main, ["--sweep=sw-x"]), "audit.py": (audit.main, []),
            "report.py": (report.main, ["--sweep=sw-x"]), "analysis.runs": (runs.main, ["export", "x.json"])}


@pytest.mark.parametrize("cli", ["ablations.store", "sweep.py", "ablations.rescore", "audit.py", "report.py",
                                 "analysis.runs", "run.py"])
def test_every_cli_takes_its_database_as_dash_m_and_refuses_a_bad_url_by_name(cli, tmp_path, monkeypatch, capsys):
    """``-m`` names the database on every command line (audit.py and report.py took only ``--mongo-url``, which
    still works), and a value of no form a database has, on ``-m`` or in $ABLATIONS_MONGO_URL, is refused in one
    line naming where it came from, with exit 2 (store, sweep.py, rescore and run.py raised a traceback)."""
    bad = "invalid -m value 'a:b': valid forms are mongodb://HOST:PORT[/DB] or HOST:PORT:DB or DB"
    from_env = bad.replace("-m value", "$ABLATIONS_MONGO_URL value")
    monkeypatch.setenv("ABLATIONS_HOME", str(tmp_path))
    if cli == "run.py":  # its own parser: Sacred's, with -m taken out first
        from ablations import run

        monkeypatch.setenv("ABLATIONS_MONGO_URL", "mongodb://127.0.0.1:9/x")
        assert run.cli(["run.py", "-m", "a:b", "with", "smoke"]) == 2 and capsys.readouterr().err == f"ERROR: {bad}\n"
        monkeypatch.setenv("ABLATIONS_MONGO_URL", "a:b")
        assert run.cli(["run.py", "with", "smoke"]) == 2 and capsys.readouterr().err == f"ERROR: {from_env}\n"
        return
    main, words = database_clis()[cli]
    with pytest.raises(SystemExit) as refused:
        main([*words[:1], "-m", "a:b", *words[1:]])
    assert refused.value.code == 2 and f"argument -m/--mongo/--mongo-url: {bad}\n" in capsys.readouterr().err
    monkeypatch.setenv("ABLATIONS_MONGO_URL", "a:b")
    assert main(words) == 2 and capsys.readouterr().err == f"ERROR: {from_env}\n"
    assert not (tmp_path / "mongo").exists()  # no embedded server was started for it
