"""The budget probe (benchmarks/budget.py) and the choice of the `gpu` budget (benchmarks/budget_choice.py): each
curve point is the run of that many steps, a probe goes on from its checkpoint, a decaying rate is one run a point
(branched from one constant-rate run), the choice picks the largest probed budget that draws digits and fits, and
probe_effects.py compares probes' cells paired by seed."""
import argparse
import json
import shutil

import pytest
import scipy.stats
import torch
from PIL import Image
from torchvision.utils import save_image

from benchmarks import budget, budget_choice, budget_sittings, probe_effects
from benchmarks.budget import learning_curve
from core.checkpoint import save_checkpoint
from core.config import SCALES, Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.evaluation import calibrate, sample_and_evaluate
from core.fidelity import class_share_range, evaluate
from core.train import train


def test_learning_curve_points_are_the_runs_of_that_many_steps_and_one_ema_run_gives_both_curves():
    """Evaluating mid-run changes nothing: the curve's last point is a straight run of that many steps. An EMA
    run's trained weights are the EMA-off run's, bit for bit, so one run gives both curves."""
    config = Config(**SCALES["smoke"] | {"train_steps": 6, "n_samples": 16}, dropout=0.1, ema=True, device="cpu")
    images = as_tensor(mnist(train=True))
    rows, process = learning_curve(config, [3, 6], images, log=lambda line: None, trained_too=True)
    assert [(r["step"], r["ema"]) for r in rows] == [(3, False), (3, True), (6, False), (6, True)]
    straight = DiffusionProcess(config)  # constructing one reseeds the global generators that dropout draws from
    train(straight, images)
    straight_off = DiffusionProcess(config.replace(ema=False))
    train(straight_off, images)
    for mine, theirs in ((process.model, straight.model), (process.ema_model, straight.ema_model),
                         (process.model, straight_off.model)):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    assert rows[2]["fid"] == sample_and_evaluate(straight_off, 0)[1]["fid"] != rows[3]["fid"]
    assert rows[3]["fid"] == sample_and_evaluate(straight, 0)[1]["fid"]  # the EMA point is the straight EMA run's
    assert 0 <= rows[3]["min_class_share"] <= 0.1 <= rows[3]["max_class_share"] <= 1 and rows[3]["nll_bpd"] > 0
    assert {(r["device"], r["scored_with"]) for r in rows} == {("cpu", "ddim-10 eta 0, N 16")}  # what --choose compares


def test_a_probe_in_several_sittings_is_the_probe_in_one(tmp_path, capsys):
    """A curve resumed from its checkpoint, mid-run or after a point, gives the rows of the curve made in one go,
    bit for bit (timings aside); a checkpoint of another run, or one past a point it never scored, is refused."""
    config = Config(**SCALES["smoke"] | {"n_samples": 16}, dropout=0.1, ema=True, device="cpu")
    images = as_tensor(mnist(train=True))
    whole, cut = tmp_path / "whole.pt", tmp_path / "cut.pt"

    def cut_at_first_point(rows):  # the file as a probe killed while scoring step 4 would leave it: step 2
        if not cut.exists():
            shutil.copy(whole, cut)
    quiet = dict(log=lambda line: None, trained_too=True)
    one_go, _ = learning_curve(config, [4, 8], images, checkpoint=whole, checkpoint_every=2,
                               on_point=cut_at_first_point, **quiet)
    resumed, process = learning_curve(config, [4, 8], images, checkpoint=cut, **quiet)
    timings = ("train_s", "sample_s", "heldout_s")
    assert [{k: v for k, v in r.items() if k not in timings} for r in resumed] == \
        [{k: v for k, v in r.items() if k not in timings} for r in one_go] and len(one_go) == 4
    assert torch.load(cut, weights_only=True)["step"] == 8
    again, process = learning_curve(config, [4, 8], images, checkpoint=whole, **quiet)  # all scored: no work
    assert again == one_go and process.step == 8
    same = ["--set", "n_samples=16", "dropout=0.1", "device=cpu"]
    for words, message in ((["--curve", "10", "--ema", "off", *same], "another run's (ema=True (here False))"),
                           (["--curve", "6,10", *same], "invalid --curve points [6]: "),
                           (["--curve", "10", "--seeds", "0,1", *same], "valid with one seed")):
        with pytest.raises(SystemExit):
            budget.main([*words, "--scale", "smoke", "--checkpoint", str(whole)])
        assert message in capsys.readouterr().err
    assert torch.load(whole, weights_only=True)["step"] == 8  # refused before any work


@pytest.mark.parametrize("schedule", ["cooldown", "cosine"])
def test_a_decaying_rate_curve_is_a_run_a_point_branched_from_one_constant_run(schedule, tmp_path):
    """Under a decaying lr_schedule the budget shapes the run, so each point is a run of its own budget, branched
    from one constant-rate run where the two part: bit for bit the run made from scratch (both EMA settings, with
    dropout, whose generator the trunk keeps). A checkpoint keeps one run: there, one point a call, and only a
    checkpoint of a run with the same budget goes on."""
    config = Config(**SCALES["smoke"] | {"n_samples": 16}, lr_schedule=schedule, dropout=0.1, ema=True, device="cpu")
    images = as_tensor(mnist(train=True))
    quiet = dict(log=lambda line: None, trained_too=True)
    rows, last = learning_curve(config, [5, 10], images, **quiet)
    timings = ("train_s", "sample_s", "heldout_s")
    for steps in (5, 10):
        alone, process = learning_curve(config, [steps], images, **quiet)
        assert [{k: v for k, v in r.items() if k not in timings} for r in rows if r["step"] == steps] == \
            [{k: v for k, v in r.items() if k not in timings} for r in alone]
    assert all(torch.equal(a, b) for a, b in zip(last.state_dict()["model"].values(),
                                                 process.state_dict()["model"].values()))
    assert last.optimizer.param_groups[0]["lr"] < config.lr  # the branch took its own decaying rates
    with pytest.raises(ValueError, match=f"invalid --checkpoint with --curve 4,8 under lr_schedule='{schedule}'"):
        learning_curve(config, [4, 8], images, checkpoint=tmp_path / "no.pt")
    save_checkpoint(DiffusionProcess(config.replace(train_steps=4)), tmp_path / "at4.pt")
    assert budget_sittings.resumable_state(tmp_path / "at4.pt", config, [4])["step"] == 0
    with pytest.raises(ValueError, match=r"another run's \(train_steps=4 \(here 8\)\)"):
        budget_sittings.resumable_state(tmp_path / "at4.pt", config, [8])


def test_single_point_probes_join_into_one_curve_with_their_grids_side_by_side(tmp_path, capsys):
    """``--join``: the rows of single-point calls (an annealed rate's budgets) in order of step, and each grid
    name's grids left to right; a folder without a curve.json is refused before anything is written."""
    folders = []
    for steps, shade in ((8000, 0.2), (4000, 0.8)):  # given out of order
        folder = tmp_path / f"anneal-{steps}"
        folder.mkdir()
        (folder / "curve.json").write_text(json.dumps([{"step": steps, "ema": e, "lr_schedule": "cosine"}
                                                       for e in (False, True)]))
        save_image(torch.full((3, 6, 5), shade), folder / "curve-seed0-ema-on-lr0.001.png")
        folders.append(str(folder))
    out = tmp_path / "anneal.json"
    budget.main(["--join", *folders, "--out", str(out), "--grids", str(tmp_path / "joined")])
    assert [(r["step"], r["ema"]) for r in json.loads(out.read_text())] == [(4000, False), (4000, True),
                                                                            (8000, False), (8000, True)]
    with Image.open(tmp_path / "joined" / "curve-seed0-ema-on-lr0.001.png") as strip:
        assert strip.size == (10, 6) and strip.getpixel((0, 0))[0] > strip.getpixel((9, 0))[0]  # 4,000 first
    with pytest.raises(SystemExit):
        budget.main(["--join", str(tmp_path), "--out", str(tmp_path / "no.json")])
    assert f"invalid --join {tmp_path}: no curve.json there" in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()


def test_probe_cli_changes_the_scale_keeps_grids_and_refuses_unknown_fields(tmp_path, capsys):
    """``--set`` changes the scale's fields, ``--grids`` keeps a strip of samples per run, bad input is refused."""
    out = tmp_path / "curve.json"
    budget.main(["--curve", "2,4", "--scale", "smoke", "--ema", "off", "--set", "n_samples=16", "lr=3e-4",
                 "--grids", str(tmp_path / "grids"), "--out", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["step"], r["lr"], r["ema"]) for r in rows] == [(2, 3e-4, False), (4, 3e-4, False)]
    assert rows[0]["set"] == ["n_samples=16", "lr=3e-4"]  # what the probe changed, in its rows
    with Image.open(tmp_path / "grids" / "curve-seed0-ema-off-lr0.0003.png") as grid:  # a grid of 16 (8 x 2) per step
        assert grid.size == (2 * (2 + 8 * 30), 2 + 2 * 30)
    for words, message in ((["colour=3"], "invalid --set colour: valid fields are amp, attention"),
                           (["device=gpu"], "invalid device='gpu': valid values are 'auto' or 'cpu' or 'cuda'"),
                           (["lr_schedule=cosine", "--curve", "2,4", "--checkpoint", str(tmp_path / "c.pt")],
                            "invalid --checkpoint with --curve 2,4 under lr_schedule='cosine'"),
                           (["n_samples=16", "--curve", "2,4k"], "invalid --curve '2,4k': valid values are "
                                                                  "comma-separated integers >= 1, e.g. 4000,8000")):
        with pytest.raises(SystemExit):
            budget.main(["--curve", "2", "--scale", "smoke", "--set", *words, "--out", str(tmp_path / "no.json")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "no.json").exists()
    # the `gpu` scale holds ema=True, and --ema says which weights the probe scores (the scale's ema once clashed)
    words = dict(scale="gpu", set=["device=cpu"], lr=None, seeds=[0, 1], curve=[100], checkpoint=None,
                 checkpoint_every=0)
    off = budget.curve_configs(argparse.Namespace(ema="off", **words))
    assert [(c.ema, c.seed) for c in off] == [(False, 0), (False, 1)]
    assert budget.curve_configs(argparse.Namespace(ema="both", **words))[0].ema


def test_real_digits_meet_the_draws_digits_rule_and_pure_noise_does_not():
    """The probe's rule is one that real digits pass at the CPU probe's N, and that noise fails."""
    real = calibrate([1000], log=lambda line: None)[0]
    assert real["comparison"] == "real train vs real test" and budget_choice.draws_digits(real)
    noise = torch.rand(1000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    metrics = evaluate(noise)
    low, high = class_share_range(metrics["class_histogram"])
    assert not budget_choice.draws_digits({"classifier_score": metrics["classifier_score"], "min_class_share": low,
                                    "max_class_share": high})


def _probe_point(step: int, score: float, shares=(0.08, 0.12), ema=False) -> dict:
    return {"step": step, "ema": ema, "train_s": 10 + 0.005 * step, "classifier_score": score, "fid": 100.0,
            "min_class_share": shares[0], "max_class_share": shares[1]}


def _effects_row(seed: int, schedule: str, ema: bool, fid: float, step: int = 300) -> dict:
    """A probe row; seed 0 at the constant rate is written as the first probes wrote it, without seed or schedule."""
    row = {"step": step, "ema": ema, "lr": 1e-3, "fid": fid, "classifier_score": 9 - fid / 100, "nll_bpd": fid / 50}
    return row if (seed, schedule) == (0, "constant") else row | {"seed": seed, "lr_schedule": schedule}


def test_probe_effects_pair_the_probes_cells_by_seed_and_refuse_what_does_not_pair(tmp_path, capsys):
    """probe_effects.py takes each probe row at --step as a run of the cell its schedule and weights name, and pairs
    the cells by seed; a bad --step or --baseline names the valid ones, and rows that do not pair (a seed twice in a
    cell, other samplers, other rates) are refused before any output."""
    constant, cooled = [300.0, 340.0, 330.0], [290.0, 300.0, 310.0]  # FID of the constant rate's EMA, of the cool-down
    files = {}
    for seed in range(3):
        files["constant", seed] = tmp_path / f"constant-{seed}.json"
        files["constant", seed].write_text(json.dumps([_effects_row(seed, "constant", True, constant[seed])]))
        files["cooldown", seed] = tmp_path / f"cooldown-{seed}.json"
        files["cooldown", seed].write_text(json.dumps([_effects_row(seed, "cooldown", False, cooled[seed]),
                                                       _effects_row(seed, "cooldown", True, 1.0, step=600)]))
    options = ["--step", "300", "--baseline", "constant, EMA on"]
    table = probe_effects.main([*map(str, files.values()), *options, "--out", str(tmp_path / "effects.json")])
    row = table.set_index(["cell", "metric"]).loc[("cooldown, EMA off", "fid")]
    assert row.n == 3 and row["diff"] == pytest.approx((sum(cooled) - sum(constant)) / 3)
    assert row.ci_low < row["diff"] < row.ci_high
    assert row.p == pytest.approx(scipy.stats.ttest_rel(cooled, constant).pvalue)
    assert json.loads((tmp_path / "effects.json").read_text())["effects"][0]["cell"] == "cooldown, EMA off"

    def refused(paths, says, step="300", baseline="constant, EMA on"):
        with pytest.raises(SystemExit):
            probe_effects.main([*map(str, paths), "--step", step, "--baseline", baseline])
        assert says in capsys.readouterr().err

    refused(files.values(), "invalid --step 400: no row of the files is at it; valid values are 300, 600", step="400")
    refused(files.values(), "invalid --baseline 'cosine, EMA on': valid values are the cells at step 300: "
                            "'constant, EMA on', 'cooldown, EMA off'", baseline="cosine, EMA on")
    files["cooldown", 1].write_text(json.dumps([_effects_row(1, "cooldown", False, f) for f in (1.0, 2.0)]))
    refused([files["constant", 1], files["cooldown", 1]], "cooldown, EMA off seed 1 (2 runs)")
    for (schedule, seed), eta in zip(files, (0, 1)):
        files[schedule, seed].write_text(json.dumps([_effects_row(seed, schedule, schedule == "constant", 1.0)
                                                     | {"scored_with": f"ddim-100 eta {eta}, N 1000"}]))
    refused(list(files.values())[:2], "rows of scored_with ddim-100 eta 0, N 1000, ddim-100 eta 1, N 1000")
    files["constant", 2].write_text(json.dumps([_effects_row(2, "constant", True, 1.0) | {"lr": 2e-3}]))
    refused([files["constant", 2], files["cooldown", 2]], "trained at several rates (0.002, 0.001)")


def test_choose_refuses_curves_probed_on_other_devices_or_scored_otherwise():
    """A CPU probe's rows (scored at N = 1,000) pooled with a GPU probe's (N = 5,000), or a curve projected with a
    suite timed on another kind of device, would give a budget from numbers that do not compare: refused, by name.
    Rows written before ``scored_with`` was recorded (the committed H100 probe's) pass beside rows that record it."""
    suite = {"runs": 6, "train_steps": 1000, "sequential_s": 240.0, "suite_speedup_vs_sequential": 4.0,
             "device": "NVIDIA H100 80GB HBM3"}
    gpu = [_probe_point(step, 8.0) | {"device": "cuda"} for step in (4000, 8000)]
    new = [_probe_point(step, 8.5, ema=True) | {"device": "cuda:0", "scored_with": "ddim-100 eta 1, N 5000"}
           for step in (4000, 8000)]
    assert budget_choice.choose(gpu + new, suite)["points"]  # cuda:0 is cuda; an old row has no scored_with
    cpu = [p | {"device": "cpu", "scored_with": "ddim-100 eta 1, N 1000"} for p in new]
    with pytest.raises(ValueError, match="invalid curve: rows of device cpu, cuda; valid curves were probed on one"):
        budget_choice.choose(gpu + cpu, suite)
    other_n = [p | {"scored_with": "ddim-100 eta 1, N 1000", "lr": 2e-3} for p in new]
    with pytest.raises(ValueError, match="rows of scored_with ddim-100 eta 1, N 1000, ddim-100 eta 1, N 5000"):
        budget_choice.choose(gpu + new + other_n, suite)
    with pytest.raises(ValueError, match="invalid --speedup: timed on NVIDIA H100 80GB HBM3, where the curve was "
                                         "probed on cpu"):
        budget_choice.choose(cpu, suite)
    assert budget_choice.choose(cpu, suite | {"device": "cpu"})["points"]


def test_a_probe_of_other_fields_is_a_series_of_its_own_whose_dearer_step_weighs(tmp_path, capsys):
    """PROBE_SET="batch_size=512" probes the scale with another batch: its rows are never pooled with the scale's
    own, it is chosen only where the scale's own fields do not qualify, its words are the budget's, and its
    dearer step lengthens the projected suite."""
    suite = {"runs": 6, "train_steps": 1000, "sequential_s": 240.0, "suite_speedup_vs_sequential": 4.0, "pack": 6,
             "packed_s": 60.0, "phase_medians_s": {"packed": {"train": 20.0}, "sequential": {"train": 5.0}}}
    scale = [_probe_point(4000, 8.0) | {"set": []}, _probe_point(8000, 8.5) | {"set": []}]
    big = [{**_probe_point(step, score), "train_s": 10 + 0.02 * step, "lr": 2e-3,
            "set": ["batch_size=512", "lr=2e-3", "lr_schedule=cooldown"], "lr_schedule": "cooldown"}
           for step, score in [(2000, 9.1), (4000, 9.4)]]
    # the scale's step: 0.005 s solo, as the suite's (5 s for 1,000): packed steps cost the measured 0.02 s
    assert budget_choice.step_ratio(scale, suite) == pytest.approx(1.0)
    assert budget_choice.project_suite_s(8000, scale, suite) == pytest.approx(3 * (60 - 20 + 8000 * 0.02))
    # the batch of 512's step is 4 times as dear: so is its packed step (that it packs as well is assumed)
    assert budget_choice.step_ratio(big, suite) == pytest.approx(4.0)
    assert budget_choice.project_suite_s(2000, big, suite) == pytest.approx(3 * (60 - 20 + 2000 * 0.08))
    choice = budget_choice.choose(scale + big, suite, minutes=9, scale_lr=1e-3)
    assert [(p["set"], p["step"], p["draws_digits"]) for p in choice["points"]] == [  # series by their first step
        (["batch_size=512"], 2000, True), (["batch_size=512"], 4000, True), ([], 4000, False), ([], 8000, False)]
    # 4,000 steps at batch 512 is 3 waves of 40 + 320 s: 18 min, too long; 2,000 steps is 10 min, too long at 9
    assert (choice["train_steps"], choice["set"]) == (None, None)
    choice = budget_choice.choose(scale + big, suite, minutes=13, scale_lr=1e-3)
    assert (choice["train_steps"], choice["lr"], choice["lr_schedule"], choice["set"]) == (
        2000, 2e-3, "cooldown", ["batch_size=512"])
    # where the scale's own fields qualify too, they win
    own = [p | {"classifier_score": 9.2} for p in scale]
    assert budget_choice.choose(own + big, suite, minutes=30, scale_lr=1e-3)["set"] == []
    with pytest.raises(ValueError, match=r"invalid curve: 1 points with EMA off at lr 0.002 cooldown batch_size=512"):
        budget_choice.choose(scale + big[:1], suite)
    for name, rows in {"curve": scale + big, "suite": suite}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    budget.main(["--choose", str(tmp_path / "curve.json"), "--speedup", str(tmp_path / "suite.json"), "--minutes",
                 "13"])
    out = capsys.readouterr().out
    assert "lr 0.002 cooldown batch_size=512 EMA off    2000 steps: classifier score  9.10" in out
    assert "suite ~ 10.0 min (a step 4.00x the suite's)\n" in out
    assert "-> the gpu scale's budget: train_steps=2000 lr=0.002 lr_schedule=cooldown batch_size=512\n" in out

def test_suite_results_at_several_budgets_project_by_a_line_fused_or_not(tmp_path, capsys):
    """Suite results measured alike at other train_steps give a line of the packed wall in the steps: the one
    projection that holds for fused groups and for packed-only results, which one result alone cannot project."""
    fused = {"device": "H100", "pack": 6, "mps": True, "fuse": True, "runs": 18}
    suites = [fused | {"train_steps": steps, "packed_s": wall} for steps, wall in [(1000, 150.0), (3000, 210.0),
                                                                                  (5000, 270.0)]]
    suite = budget_choice.measured(suites)
    assert suite["train_steps"] == 5000 and suite["line"]["train_steps"] == [1000, 3000, 5000]
    assert (suite["line"]["intercept_s"], suite["line"]["slope_s"]) == (pytest.approx(120.0), pytest.approx(0.03))
    curve = [_probe_point(8000, 9.1), _probe_point(12000, 9.3)]
    # 18 runs, as measured: the line itself; 36 runs take twice the waves of the pack
    assert budget_choice.project_suite_s(12000, curve, suite) == pytest.approx(120 + 0.03 * 12000)
    assert budget_choice.project_suite_s(12000, curve, suite, runs=36) == pytest.approx(2 * (120 + 0.03 * 12000))
    # 8,000 steps: 360 s, 6 min, within 85% of 9; 12,000 steps: 8 min, not
    assert budget_choice.choose(curve, suite, minutes=9, scale_lr=1e-3)["train_steps"] == 8000
    unfused = {"runs": 6, "train_steps": 1000, "sequential_s": 240.0, "suite_speedup_vs_sequential": 4.0}
    assert budget_choice.measured([unfused]) is unfused  # a result with its sequential sweep stands alone, as before
    older = {"device": "H100", "pack": 6, "runs": 6, "mps": True, "train_steps": 1000, "packed_s": 100.0}  # no "fuse"
    newer = older | {"fuse": False, "train_steps": 3000, "packed_s": 160.0}
    assert budget_choice.measured([older, newer])["line"]["slope_s"] == pytest.approx(0.03)
    refused = [([suites[0]], "invalid suite result alone: fused"),
               ([fused | {"fuse": False, "train_steps": 1000, "packed_s": 1.0}], "alone: packed only"),
               ([suites[0], suites[1] | {"pack": 3}], r"invalid suite results: pack differs \(3, 6\)"),
               ([suites[0], suites[0]], r"invalid suite results: train_steps \[1000, 1000\]"),
               ([suites[0], suites[1] | {"packed_s": 140.0}], "the packed wall does not grow with train_steps")]
    for rows, message in refused:
        with pytest.raises(ValueError, match=message):
            budget_choice.measured(rows)
    paths = [tmp_path / f"suite-{s['train_steps']}.json" for s in suites[:2]]
    for path, result in zip(paths, suites):
        path.write_text(json.dumps(result))
    (tmp_path / "curve.json").write_text(json.dumps(curve))
    budget.main(["--choose", str(tmp_path / "curve.json"), "--speedup", *map(str, paths)])
    out = capsys.readouterr().out
    assert out.startswith("projected from the packed sweeps (pack 6 under MPS fused, 18 runs) at 1,000, 3,000 "
                          "steps: 120 s + 30.00 s a 1,000 steps, x1 for 18 runs\n")
    assert "-> the gpu scale's budget: train_steps=8000\n" in out
    with pytest.raises(SystemExit):  # a refusal is a usage error that says why
        budget.main(["--choose", str(tmp_path / "curve.json"), "--speedup", str(paths[0])])
    assert "invalid suite result alone: fused; valid: two or more such results" in capsys.readouterr().err
    for words, message in ((["--choose", str(tmp_path / "none.json"), "--speedup", str(paths[0])],
                            f"invalid --choose {tmp_path / 'none.json'} ([Errno 2] No such file"),
                           (["--choose", str(tmp_path / "curve.json"), "--speedup", str(tmp_path / "curve.json"),
                             str(tmp_path)], f"invalid --speedup {tmp_path} ([Errno 21] Is a directory")):
        with pytest.raises(SystemExit):
            budget.main(words)
        assert message in capsys.readouterr().err


def test_the_gpu_budget_is_the_largest_probed_one_that_draws_digits_and_fits(tmp_path, capsys):
    suite = {"runs": 6, "train_steps": 1000, "sequential_s": 240.0, "suite_speedup_vs_sequential": 4.0}
    curve = [_probe_point(2000, 5.0), _probe_point(8000, 9.2), _probe_point(12000, 9.5), _probe_point(16000, 9.7),
             _probe_point(8000, 8.9, ema=True), _probe_point(12000, 9.6, ema=True), _probe_point(16000, 9.9, ema=True)]
    # 18 runs of (40 s at 1,000 steps + 0.005 s a step beyond) / 4: 12,000 steps is 7.1 min, 16,000 is 8.6 min.
    assert budget_choice.project_suite_s(12000, curve[:4], suite) == pytest.approx(18 * (40 + 11000 * 0.005) / 4)
    # with the packed runs' phase medians: 3 waves of the pack of 6 (60 s), each 11,000 steps longer at the packed
    # runs' 0.02 s a step (20 s for 1,000): training that packs worse than the whole run weighs more as it grows
    phased = suite | {"pack": 6, "packed_s": 60.0, "phase_medians_s": {"packed": {"train": 20.0}}}
    assert budget_choice.project_suite_s(12000, curve[:4], phased) == pytest.approx(3 * (60 + 11000 * 0.02))
    choice = budget_choice.choose(curve, suite, minutes=9)
    assert (choice["train_steps"], choice["ema"]) == (12000, False)
    assert [p["draws_digits"] for p in choice["points"]] == [False, True, True, True, False, True, True]
    curve[2] = _probe_point(12000, 9.5, shares=(0.03, 0.12))  # a class below 5%: not digits enough
    assert budget_choice.choose(curve, suite, minutes=9)["train_steps"] == 8000
    # EMA off never draws digits in time: the EMA budget is chosen, and the baseline then holds EMA
    no_digits = [p | {"lr": 1e-4} for p in [_probe_point(r["step"], 8.0) for r in curve[:4]] + curve[4:]]
    picked = budget_choice.choose(no_digits, suite, minutes=9)
    assert (picked["train_steps"], picked["lr"], picked["ema"]) == (12000, 1e-4, True)
    # ... unless EMA off draws digits at the probe's second rate: the baseline keeps the seed's EMA off
    fast = [p | {"lr": 1e-3, "classifier_score": 9.2} for p in no_digits]
    picked = budget_choice.choose(no_digits + fast, suite, minutes=9)
    assert (picked["train_steps"], picked["lr"], picked["ema"]) == (12000, 1e-3, False)
    assert budget_choice.choose(curve, suite, minutes=3)["train_steps"] is None
    # an annealed rate's series (lr_schedule, one run a point) is a series of its own, chosen where only it draws
    # digits, and its schedule is among the budget's words
    annealed = [p | {"lr": 1e-3, "lr_schedule": "cosine", "classifier_score": 9.3} for p in no_digits[:4]]
    picked = budget_choice.choose(no_digits + annealed, suite, minutes=9, scale_lr=1e-3)
    assert (picked["train_steps"], picked["lr"], picked["lr_schedule"], picked["ema"]) == (12000, 1e-3, "cosine", False)
    with pytest.raises(ValueError, match="invalid curve: 1 points with EMA off at lr 0.0001"):
        budget_choice.choose(curve[:1] + curve[4:], suite)
    with pytest.raises(ValueError, match=r"invalid curve: seeds \[0, 1\]"):
        budget_choice.choose(curve + [p | {"seed": 1} for p in curve], suite)
    for name, rows in {"curve": curve, "no-digits": no_digits, "fast": fast, "suite": suite,
                       "annealed": no_digits + annealed}.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    # rows without "lr" are at the scale's rate: the gpu scale's 1e-3
    choose = ["--choose", str(tmp_path / "curve.json"), "--speedup", str(tmp_path / "suite.json")]
    budget.main(choose)
    assert "-> the gpu scale's budget: train_steps=8000\n" in capsys.readouterr().out
    budget.main(choose + ["--minutes", "3"])
    out = capsys.readouterr().out
    assert "-> no probed budget both draws digits and fits 18 runs in 85% of 3.0 min" in out
    # how far off each run is: its first point at score 9, measured (EMA off reaches it at 8,000 steps)
    assert "lr 0.001 EMA off: classifier score 9 at 8,000 steps, suite ~5.6 min\n" in out
    slow = [_probe_point(8000, 7.5), _probe_point(12000, 8.0), _probe_point(12000, 7.0, ema=True),
            _probe_point(16000, 6.9, ema=True)]
    reached = budget_choice.choose(slow, suite, minutes=9)["score_reached"]
    # ... or extrapolated: 8.0 + 0.5 every 4,000 steps reaches 9 at 20,000; a falling line never does
    assert [(r["ema"], r["step"], r["extrapolated"]) for r in reached] == [(False, 20000, True), (True, None, False)]
    assert reached[0]["projected_suite_min"] == pytest.approx(18 * (40 + 19000 * 0.005) / 4 / 60)
    (tmp_path / "slow.json").write_text(json.dumps(slow))
    budget.main(["--choose", str(tmp_path / "slow.json"), "--speedup", str(tmp_path / "suite.json")])
    out = capsys.readouterr().out
    assert "EMA off: classifier score 9 near 20,000 steps, suite ~10.1 min (a straight line through its last" in out
    assert "EMA on : classifier score 9 nowhere: its last two points do not rise" in out
    budget.main(["--choose", str(tmp_path / "no-digits.json"), "--speedup", str(tmp_path / "suite.json")])
    assert "-> the gpu scale's budget: train_steps=12000 lr=0.0001 ema=True (with EMA off no probed budget" in \
        capsys.readouterr().out
    budget.main(["--choose", str(tmp_path / "no-digits.json"), str(tmp_path / "fast.json"), "--speedup",
                 str(tmp_path / "suite.json")])
    assert "-> the gpu scale's budget: train_steps=12000\n" in capsys.readouterr().out  # at the scale's own rate
    budget.main(["--choose", str(tmp_path / "annealed.json"), "--speedup", str(tmp_path / "suite.json")])
    out = capsys.readouterr().out
    assert "lr 0.001 cosine EMA off   12000 steps: classifier score  9.30" in out
    assert "-> the gpu scale's budget: train_steps=12000 lr_schedule=cosine\n" in out
    with pytest.raises(SystemExit):
        budget.main(choose[:2])
    assert "invalid --choose without --speedup" in capsys.readouterr().err
