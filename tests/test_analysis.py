"""Analysis: report regeneration, statistics, audit and re-execution, on real stored runs."""
from __future__ import annotations

import copy
import datetime as dt
import io
import re
import signal
import subprocess
import sys
from pathlib import Path

import gridfs
import numpy as np
import pandas as pd
import pytest
import torch

from ablations.record import HELDOUT_KEYS, LEVEL_METRICS, METRICS, SAMPLES, dirty_run_code
from ablations.store import URL_ENV
from analysis import audit, report, runs, stats
from analysis.reproduce import environment_differences, load_run, refusal, reproduce, resample
from core.classifier import expected_sha256
from core.fidelity import to_uint8
from tests.helpers import Server, run_env

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A real smoke sweep (baseline and attention off, seeds 0 and 1) in a fresh server."""
    server = Server(tmp_path_factory.mktemp("mongo")).start()
    env = run_env(server.url, tmp_path_factory.mktemp("home"))
    out = subprocess.run([sys.executable, str(REPO / "ablations" / "sweep.py"), "--only", "attention",
                          "--seeds", "0,1", "with", "smoke", "threads=1"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sweep_id = out.stdout.split("sweep id: ")[1].split()[0]
    yield server, sweep_id
    server.kill(signal.SIGTERM)


def test_report_from_database_and_from_dump_agree(stored, tmp_path):
    server, sweep_id = stored
    docs = runs.from_mongo(server.url, sweep_id)
    from_db = report.build(docs, tmp_path / "db", sweep_id)
    dump = runs.export(docs, tmp_path / "runs.json")
    from_file = report.build(runs.from_dump(dump), tmp_path / "dump", sweep_id)
    again = report.build(runs.from_dump(dump), tmp_path / "again", sweep_id)
    for name in from_db:
        pd.testing.assert_frame_equal(from_db[name], from_file[name])
        pd.testing.assert_frame_equal(from_file[name], again[name])
    assert (tmp_path / "dump" / "report.md").read_text() == (tmp_path / "again" / "report.md").read_text()
    for figure in (tmp_path / "dump" / "figures").glob("*.png"):  # byte for byte, jittered dots included
        assert figure.read_bytes() == (tmp_path / "again" / "figures" / figure.name).read_bytes(), figure.name
    assert len(list((tmp_path / "dump" / "figures").glob("*.png"))) >= 4
    html = (tmp_path / "dump" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and 'src="figures/' not in html
    md = (tmp_path / "dump" / "report.md").read_text()
    assert "n=2" in md and expected_sha256() in md and "floor" in md and "attention" in md
    for metric in ("fid", "nll_bpd", "eps_mse"):  # every verdict names the metric it rests on
        assert f"## Verdicts on {metric} (paired by seed, Holm-corrected across the cells for {metric})" in md
    assert "unadjusted 95% t-interval" in md and "Spearman rho = " in md and "over n = 4 runs" in md
    assert (tmp_path / "dump" / "figures" / "eps_mse_by_log_snr.png").exists()


def test_report_escapes_config_strings(stored, tmp_path):
    server, sweep_id = stored
    docs = runs.from_mongo(server.url, sweep_id)
    for doc in docs:
        if doc["config"]["cell"] == "attention=False":
            doc["config"]["cell"] = "<script>alert(1)</script>"
    report.build(docs, tmp_path, sweep_id)
    html = (tmp_path / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;" in html


def test_report_command_line_from_dump(stored, tmp_path):
    server, sweep_id = stored
    dump = runs.export(runs.from_mongo(server.url, sweep_id), tmp_path / "runs.json")
    out = subprocess.run([sys.executable, str(REPO / "analysis" / "report.py"), "--dump", str(dump), "--out",
                          str(tmp_path / "r")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "r" / "report.md").exists() and (tmp_path / "r" / "report.html").exists()


def _synthetic(effects: dict[str, float], seeds: int, noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    seed_level = rng.normal(0, 20, seeds)  # shared per seed: what pairing removes
    rows = [{"cell": cell, "seed": s, "fid": 100 + seed_level[s] + effect + rng.normal(0, noise)}
            for cell, effect in effects.items() for s in range(seeds)]
    return pd.DataFrame(rows)


def test_report_sets_the_effects_of_several_scales_side_by_side(tmp_path):
    """Two scales are reported apart, each against its own baseline, and side by side with the signs compared."""
    small = runs.from_dump(REPO / "reports" / "runs.json")
    other = copy.deepcopy(small)
    base_fid = {d["config"]["seed"]: d["result"]["fid"] for d in small if d["config"]["cell"] == "baseline"}
    for doc in other:
        doc["_id"] += 1000
        doc["config"] |= {"scale": "gpu", "lr": 1e-3, "train_steps": 8000}
        if doc["config"]["cell"] == "schedule=linear":  # at "gpu", linear helps by what it hurt at small
            doc["result"]["fid"] = 2 * base_fid[doc["config"]["seed"]] - doc["result"]["fid"]
    dumps = [REPO / "reports" / "runs.json", runs.export(other, tmp_path / "gpu.json")]
    assert report.main(["--dump", str(dumps[0]), "--dump", str(dumps[1]), "--out", str(tmp_path / "scales")]) == 0
    assert all((tmp_path / "scales" / scale / "report.md").exists() for scale in ("small", "gpu"))
    table = report.across_scales({scale: report.tables(runs.runs_table([d for d in small + other
                                                                       if d["config"]["scale"] == scale]))["effects"]
                                  for scale in ("small", "gpu")})["fid"].set_index("cell")
    assert table.loc["schedule=linear", "signs agree"] == "no"
    assert (table.drop("schedule=linear")["signs agree"] == "yes").all()
    assert table.loc["schedule=linear", "small"].startswith("+") and table.loc["schedule=linear", "gpu"].startswith("-")
    # opposite signs, but neither scale has a verdict on FID (Holm p 0.41 at both): the verdicts agree on none,
    # while the budget's FID verdict (Holm p 0.046) is "higher" at both
    assert table.loc["schedule=linear", "verdicts agree"] == "yes: none"
    assert table.loc["train_steps=300", "verdicts agree"] == "yes: higher"
    side_by_side = (tmp_path / "scales" / "report.md").read_text()
    assert "| schedule=linear |" in side_by_side
    # the scales' settings stand above their effects: here they differ in budget and learning rate
    assert side_by_side.index("## how the scales differ") < side_by_side.index("## fid")
    rows = {line.split(" | ")[0]: line for line in side_by_side.splitlines() if line.startswith(("| small", "| gpu"))}
    assert "| 600 steps x 32 images at lr 0.0001 or 300 steps x 32 images at lr 0.0001 per run |" in rows["| small"]
    assert "| 8000 steps x 32 images at lr 0.001 per run |" in rows["| gpu"]


def test_a_scale_whose_baseline_has_ema_on_shows_its_ema_effect_turned_the_seeds_way():
    """At `small` the cell ema=True helps by 10; at a scale whose baseline has EMA on, its cell ema=False hurts
    by 12. Side by side both read as "ema=True minus EMA off": -10 and -12, signs and verdicts agreeing. Dropout
    does nothing at `small` and hurts at `gpu`: no verdict at one scale, "higher" at the other."""
    small = stats.paired_effects(_synthetic({"baseline": 0, "ema=True": -10, "attention=False": 5, "dropout=0.1": 0},
                                            6, 1.0))
    gpu = stats.paired_effects(_synthetic({"baseline": 0, "ema=False": 12, "attention=False": 5, "dropout=0.1": 3},
                                          6, 1.0, seed=1))
    table = report.across_scales({"small": small, "gpu": gpu})["fid"].set_index("cell")
    assert list(table.index) == ["ema=True", "attention=False", "dropout=0.1"]
    assert list(table["signs agree"]) == ["yes", "yes", "no"]
    assert list(table["verdicts agree"]) == ["yes: lower", "yes: higher", "no: small none, gpu higher"]
    turned = table.loc["ema=True", "gpu"]
    assert turned.startswith("-1") and "ema=False against its baseline, sign turned" in turned
    low, high = (float(x) for x in turned.split("[")[1].split("]")[0].split(", "))
    assert low < -12 < high < 0
    assert report.oriented("attention=False") == ("attention=False", 1)
    assert report.oriented("ema=False") == ("ema=True", -1) and report.oriented("dropout=0.0") == ("dropout=0.1", -1)
    assert report.oriented("attention=True+ema=False") == ("attention=True+ema=False", 1)


def test_stats_recover_known_effects():
    data = _synthetic({"baseline": 0, "attention": 30, "ema": 0}, seeds=10, noise=3)
    effects = stats.paired_effects(data).set_index("cell")
    assert effects.loc["attention", "ci_low"] < 30 < effects.loc["attention", "ci_high"]
    assert effects.loc["attention", "p_holm"] < 0.001 and effects.loc["attention", "verdict"].startswith("worse")
    assert effects.loc["ema", "ci_low"] < 0 < effects.loc["ema", "ci_high"]
    assert effects.loc["ema", "verdict"].startswith("no clear effect")


def test_stats_are_honest_at_two_seeds():
    two = stats.paired_effects(_synthetic({"baseline": 0, "attention": 30}, seeds=2, noise=3)).iloc[0]
    ten = stats.paired_effects(_synthetic({"baseline": 0, "attention": 30}, seeds=10, noise=3)).iloc[0]
    assert (two.ci_high - two.ci_low) > 4 * (ten.ci_high - ten.ci_low) and two.n == 2
    one = stats.paired_effects(_synthetic({"baseline": 0, "attention": 30}, seeds=1, noise=3)).iloc[0]
    assert np.isnan(one.p) and "too few seeds" in one.verdict


def test_pairing_refuses_a_cell_with_two_runs_of_one_seed():
    data = _synthetic({"baseline": 0, "attention": 30}, seeds=3, noise=3)
    twice = pd.concat([data, data[(data.cell == "attention") & (data.seed == 1)]])
    with pytest.raises(ValueError, match=r"two runs of one seed cannot be paired by seed: attention seed 1 \(2 runs\)"):
        stats.paired_effects(twice)


def test_holm_and_factorial():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    cells = ["baseline", "a", "b", "a+b"]
    fid = {"baseline": 100, "a": 110, "b": 95, "a+b": 125}  # a: +10, b: -5, a x b: +20 at b flipped
    table = stats.factorial_effects(pd.DataFrame({"cell": cells, "fid": [fid[c] for c in cells]}), ["a", "b"])
    effects = dict(zip(table.term, table.effect))
    assert effects["a"] == pytest.approx(20) and effects["b"] == pytest.approx(5)
    assert effects["a x b"] == pytest.approx(10)  # half of (30 - 10): a's effect with b flipped vs without


def _copy_run(db, doc: dict, new_id: int, clean: bool = False) -> dict:
    """A copy of a stored run under a new id, outside any sweep, to plant a problem in.

    :param clean: record a clean working tree, so that the copy is problem-free even when the
        original was made from a dirty checkout, and a planted problem is the copy's only one.
    """
    info = dict(doc["info"], git={"commit": "0" * 40, "dirty": False, "changed": []}) if clean else dict(doc["info"])
    copy = dict(doc, _id=new_id, config=dict(doc["config"], sweep_id=None), info=info)
    db.runs.insert_one(copy)
    for m in db.metrics.find({"run_id": doc["_id"]}):
        db.metrics.insert_one({k: v for k, v in m.items() if k != "_id"} | {"run_id": new_id})
    return copy


def test_audit_flags_each_planted_problem(stored):
    server, sweep_id = stored
    db = server.db()
    original = db.runs.find_one({"config.sweep_id": sweep_id, "status": "COMPLETED"})
    planted = range(900, 910)
    for new_id in planted:
        _copy_run(db, original, new_id, clean=True)
    db.metrics.delete_one({"run_id": 901, "name": "eval.fid"})
    db.runs.update_one({"_id": 902}, {"$set": {"info.mnist_sha256.train": "0" * 64}})
    db.runs.update_one({"_id": 903}, {"$set": {"status": "RUNNING",
                                               "heartbeat": dt.datetime.utcnow() - dt.timedelta(hours=1)}})
    db.runs.update_one({"_id": 904}, {"$set": {"info.git.dirty": True, "info.git.changed": ["core/ddpm.py"]}})
    db.runs.update_one({"_id": 905}, {"$set": {"info.environment.torch": {"py/object": "TorchVersion"}}})
    db.runs.update_one({"_id": 906}, {"$set": {"result.fid": original["result"]["fid"] - 1.0}})  # edited records
    db.runs.update_one({"_id": 907}, {"$set": {"config.attention": not original["config"]["attention"]}})
    db.runs.update_one({"_id": 908}, {"$set": {"info.class_histogram": [0] * 10}})
    db.runs.update_one({"_id": 909}, {"$set": {"config.schedule": "cosin"}})
    rows = {r["run_id"]: r["problems"] for r in audit.audit(db)}
    assert rows[900] == []  # the clean copy: each problem below is the planted one
    assert rows[901] == ["missing metrics ['eval.fid']"]
    assert rows[902] == ["MNIST hashes differ from the current data"]
    assert len(rows[903]) == 1 and "stale heartbeat" in rows[903][0]
    assert rows[904] == ["run from a dirty working tree (uncommitted changes to core/ddpm.py)"]
    assert rows[905] == ["values that are not plain JSON at info.environment.torch.py/object"]
    assert rows[906] == [f"result.fid {original['result']['fid'] - 1.0!r} differs from its series' last point "
                         f"{original['result']['fid']!r}"]
    assert len(rows[907]) == 1 and rows[907][0].startswith(f"info.config_hash {original['info']['config_hash']} is "
                                                           "not its config's hash ")
    assert rows[908] == [f"info.class_histogram counts 0 samples, not the config's n_samples="
                         f"{original['config']['n_samples']}"]
    assert rows[909] == ["config is not valid: invalid schedule='cosin': valid values are 'cosine' or 'linear'"]
    cli = subprocess.run([sys.executable, str(REPO / "analysis" / "audit.py"), "-m", server.url],
                         capture_output=True, text=True)
    assert cli.returncode == 1 and "stale heartbeat" in cli.stdout
    db.runs.delete_many({"_id": {"$in": list(planted)}})


def test_reproduce_passes_and_catches_tampering(stored, capsys):
    server, sweep_id = stored
    db = server.db()
    doc = db.runs.find_one({"config.sweep_id": sweep_id, "config.cell": "baseline", "config.seed": 0})
    if refusal(doc):
        pytest.skip(f"this checkout cannot reproduce its own runs: {refusal(doc)}")
    assert reproduce(db, doc["_id"]) == 0
    assert "REPRODUCES bit for bit" in capsys.readouterr().out
    tampered = _copy_run(db, doc, 950)
    db.runs.update_one({"_id": 950}, {"$set": {"result.fid": tampered["result"]["fid"] + 1.0}})
    assert reproduce(db, 950) == 1
    out = capsys.readouterr().out
    assert "fid            DIFFERS (largest difference 1)" in out and "final weights  bitwise equal" in out
    db.runs.update_one({"_id": 950}, {"$set": {"status": "FAILED"}})
    assert reproduce(db, 950) == 2 and reproduce(db, 12345) == 2  # refused before any training
    out = capsys.readouterr().out
    assert "REFUSED: run 950 is FAILED: only COMPLETED runs reproduce" in out and "REFUSED: run 12345 is missing" in out


def test_the_readmes_notebook_recipe_loads_a_stored_run_that_draws_the_runs_own_samples(stored, monkeypatch):
    """The README's recipe, as written but for the run's id: the baseline of seed 0 (a smoke run: 64 samples),
    loaded from the database named by $ABLATIONS_MONGO_URL, draws at seed 0 the samples its run stored."""
    server, sweep_id = stored
    db = server.db()
    doc = db.runs.find_one({"config.sweep_id": sweep_id, "config.cell": "baseline", "config.seed": 0})
    recipe = re.search(r"```python\n(from ablations.store import database\n.*?)```", README.read_text(), re.S)[1]
    assert "load_run(db, 12)" in recipe and doc["config"]["n_samples"] == 64
    monkeypatch.setenv(URL_ENV, server.url)
    namespace = {}
    exec(recipe.replace("load_run(db, 12)", f"load_run(db, {doc['_id']})"), namespace)
    npz = next(a["file_id"] for a in doc["artifacts"] if a["name"] == SAMPLES)
    stored_samples = np.load(io.BytesIO(gridfs.GridFS(db).get(npz).read()))["samples"]
    assert torch.equal(to_uint8(namespace["samples"]), torch.from_numpy(stored_samples))
    db.runs.update_one({"_id": 961}, {"$set": {"status": "FAILED"}}, upsert=True)
    with pytest.raises(ValueError, match="^run 961 is FAILED: only COMPLETED runs load$"):
        load_run(db, 961)
    db.runs.delete_one({"_id": 961})


def test_resample_gives_the_stored_fid_at_the_runs_own_seed(stored, capsys):
    server, sweep_id = stored
    db = server.db()
    doc = db.runs.find_one({"config.sweep_id": sweep_id, "config.cell": "baseline", "config.seed": 1})
    assert audit.main(["--mongo-url", server.url, "--resample", str(doc["_id"]), "--seeds", "1,7"]) == 0
    out = capsys.readouterr().out
    assert "sampler seed    1" in out and "(the run's own seed: equal to the stored fid)" in out
    fid_of = {int(seed): float(fid) for seed, fid in re.findall(r"sampler seed +(\d+) +fid +([\d.]+)", out)}
    assert fid_of[1] == pytest.approx(doc["result"]["fid"], abs=0.01) and fid_of[7] != fid_of[1]
    assert "over 2 sampler seeds" in out
    tampered = _copy_run(db, doc, 951)
    db.runs.update_one({"_id": 951}, {"$set": {"result.fid": tampered["result"]["fid"] + 1.0}})
    assert resample(db, 951, [1]) == 1 and "DIFFERS from the stored" in capsys.readouterr().out
    assert resample(db, 12345, [0]) == 2 and "run 12345 is missing" in capsys.readouterr().out


def test_rescoring_adds_the_held_out_metrics_and_touches_nothing_else(stored):
    server, sweep_id = stored
    db = server.db()
    doc = db.runs.find_one({"config.sweep_id": sweep_id, "config.cell": "attention=False", "config.seed": 0})
    held_out = {f"result.{k}": "" for k in HELDOUT_KEYS} | {"info.heldout": ""}
    copy = _copy_run(db, doc, 960)
    db.runs.update_one({"_id": 960}, {"$unset": held_out})
    db.metrics.delete_many({"run_id": 960, "name": {"$in": [f"eval.{k}" for k in HELDOUT_KEYS] + list(LEVEL_METRICS)}})
    before = db.runs.find_one({"_id": 960})
    out = subprocess.run([sys.executable, "-m", "ablations.rescore", "--runs", "960", "-m", server.url],
                         capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "1 run(s) to rescore" in out.stdout, out.stdout + out.stderr
    after = db.runs.find_one({"_id": 960})
    assert {k: after["result"][k] for k in HELDOUT_KEYS} == {k: copy["result"][k] for k in HELDOUT_KEYS}  # bitwise
    assert after["info"]["heldout"] == copy["info"]["heldout"] and after["info"]["rescored"]["commit"]
    assert {m["name"] for m in db.metrics.find({"run_id": 960})} == set(METRICS)

    def untouched(d):
        info = {k: v for k, v in d["info"].items() if k not in ("heldout", "metrics", "rescored")}
        return dict(d, result={k: v for k, v in d["result"].items() if k not in HELDOUT_KEYS}, info=info)

    assert untouched(after) == untouched(before) and audit.check_consistency(db, after) == []
    again = subprocess.run([sys.executable, "-m", "ablations.rescore", "--runs", "960", "-m", server.url],
                           capture_output=True, text=True, cwd=REPO)
    assert "0 run(s) to rescore" in again.stdout  # a scored run is left alone unless --force
    db.runs.delete_one({"_id": 960})


def test_a_sweep_id_that_is_not_stored_or_a_database_that_does_not_answer_is_refused_by_name(stored, capsys):
    """A mistyped sweep id would otherwise give an empty audit that passes, or an empty export."""
    server, sweep_id = stored
    assert audit.main(["--mongo-url", server.url, "--sweep", "sw-typo"]) == 2
    err = capsys.readouterr().err
    assert "invalid sweep 'sw-typo'" in err and sweep_id in err
    assert runs.main(["export", "--sweep", "sw-typo", "-m", server.url, "/nonexistent/runs.json"]) == 2
    assert report.main(["--mongo-url", server.url, "--sweep", "sw-typo"]) == 2
    assert "valid values are the stored sweeps" in capsys.readouterr().err
    assert report.main(["--mongo-url", "mongodb://127.0.0.1:9/x", "--sweep", sweep_id]) == 2
    assert "no MongoDB answers at mongodb://127.0.0.1:9" in capsys.readouterr().err


@pytest.mark.parametrize("content, says", [(None, "No such file"), ("not json", "Expecting value"),
                                            ('{"runs": []}', "it holds no list of run records")])
def test_a_path_that_is_not_a_dump_is_refused_by_name(tmp_path, capsys, content, says):
    dump = tmp_path / "runs.json"
    if content is not None:
        dump.write_text(content)
    assert report.main(["--dump", str(dump), "--out", str(tmp_path / "r")]) == 2
    assert runs.main(["import", str(dump), "-m", "mongodb://127.0.0.1:9/x"]) == 2  # said before the database
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2
    for err in errors:
        assert f"invalid dump '{dump}'" in err and says in err and "written by `python -m analysis.runs export`" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("words, message", [
    (["--resample", "1", "--seeds", "0,x"], "invalid seeds '0,x'"),
    (["--resample", "1", "--seeds", "1,1"], "invalid seeds '1,1': 1 is given twice"),
    (["--reproduce", "0"], "invalid --reproduce '0': valid values are integers >= 1"),
    # one thing at a time: the second of these was ignored without a word
    (["--reproduce", "1", "--resample", "2"], "argument --resample: not allowed with argument --reproduce"),
    (["--sweep", "sw-x", "--reproduce", "1"], "argument --reproduce: not allowed with argument --sweep"),
    (["--seeds", "1,2"], "invalid --seeds 1,2 without --resample: the sampler seeds are for --resample RUN_ID only"),
])
def test_audit_refuses_a_bad_or_ambiguous_command_line_before_any_work(words, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        audit.main(["-m", "mongodb://127.0.0.1:9/x", *words])  # a dead database: nothing may reach it
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_report_refuses_a_file_as_its_folder_before_loading_runs(tmp_path, capsys):
    """``--out`` where a file is in the way was a traceback once the report was drawn. The database named is dead:
    had the runs been loaded first, its error would have come instead."""
    (tmp_path / "report.md").write_text("kept\n")
    for out in ("report.md", "report.md/inside"):
        with pytest.raises(SystemExit) as exit_:
            report.main(["-m", "mongodb://127.0.0.1:9/x", "--out", str(tmp_path / out)])
        assert exit_.value.code == 2 and f"invalid --out '{tmp_path / out}': a file is in the way" in \
            capsys.readouterr().err
    assert (tmp_path / "report.md").read_text() == "kept\n"


def test_reproduce_names_the_package_versions_and_cpu_that_differ():
    env = {"packages": {"torch": "1.0.0", "scipy": None}, "cpu": "a CPU of another make"}
    here = environment_differences({"info": {"environment": env}})
    assert len(here) == 3 and here[0].startswith("torch 1.0.0 in the run, 2.") and "scipy None in the run" in here[1]
    assert here[2].startswith("CPU 'a CPU of another make' in the run")
    pickled = {"py/object": "torch.torch_version.TorchVersion", "py/newargs": {"py/tuple": ["0.1.0+cpu"]}}
    assert environment_differences({"info": {"environment": {"torch": pickled}}})[0].startswith("torch 0.1.0 in")
    assert environment_differences({"info": {"environment": {"torch": str(torch.__version__)}}}) == []


def test_reproduce_refuses_another_commit():
    assert "is not the recorded commit" in refusal({"info": {"git": {"commit": "0" * 40, "dirty": False}}})
    assert "dirty working tree" in refusal({"info": {"git": {"commit": "0" * 40, "dirty": True}}})


def test_only_changes_to_the_run_code_make_a_run_dirty():
    assert not dirty_run_code({"commit": "a", "dirty": True, "changed": ["tests/test_x.py", "README.md"]})
    assert dirty_run_code({"commit": "a", "dirty": True, "changed": ["README.md", "core/ddpm.py"]})
    assert dirty_run_code({"commit": "a", "dirty": True})  # older records: which files is unknown
    assert not dirty_run_code({"commit": "a", "dirty": False, "changed": []})
