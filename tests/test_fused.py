"""Fused training (core/fused.py): each member is its solo run up to float rounding, a group repeats
and resumes bit for bit (also after a stop), its Adam and loss scaling are torch's member by member, and a group that
cannot train as one is refused by name. The fp16 comparison runs where a GPU is present."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ablations import fused_group, jobs
from ablations.runner import restored_state
from benchmarks import fusion
from core.checkpoint import load_checkpoint, load_state, save_checkpoint
from core.config import SCALES, Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.fused import GROWTH_INTERVAL, FusedTraining, StackedAdam, StackedGradScaler, train_fused
from core.train import train

REPO = Path(__file__).resolve().parent.parent
SEEDS = (0, 1, 2)
CONFIG = Config(**SCALES["smoke"] | dict(train_steps=8, batch_size=16, log_every=4, ema=True, device="cpu"))


@pytest.fixture(scope="module")
def images():
    return as_tensor(mnist(train=True))[:1024]


def members(config: Config = CONFIG, precision: str = "fp32") -> list[DiffusionProcess]:
    return [DiffusionProcess(config.replace(seed=s), precision=precision) for s in SEEDS]


def fused_run(images, config: Config = CONFIG, precision: str = "fp32"):
    processes, logged = members(config, precision), {}
    train_fused(FusedTraining(processes), images, log=lambda i, n, v, s: logged.setdefault((SEEDS[i], s), v)
                if n == "train.loss" else None)
    return processes, logged


def distance(a, b) -> float:
    return torch.cat([(x - y).flatten() for x, y in zip(a, b, strict=True)]).norm().item()


# Members differ in seed, or (a schedule=linear cell fused with its cosine baseline) in seed and schedule.
MIXED = [CONFIG.replace(seed=0), CONFIG.replace(seed=1), CONFIG.replace(seed=0, schedule="linear")]


# ... or follow an annealed rate (lr_schedule), which the group sets at each step as each solo run does
ANNEALED = [CONFIG.replace(seed=s, lr_schedule="cosine") for s in (0, 1)]


@pytest.mark.parametrize("configs", [None, MIXED, ANNEALED], ids=["seeds", "seeds-and-schedules", "cosine-rate"])
def test_fused_members_follow_their_solo_runs(images, configs):
    if configs is None:
        fused, fused_loss = fused_run(images)
    else:
        fused, fused_loss = [DiffusionProcess(c, precision="fp32") for c in configs], {}
        train_fused(FusedTraining(fused), images, log=lambda i, n, v, s: fused_loss.setdefault((i, s), v)
                    if n == "train.loss" else None)
    for i, member in enumerate(fused):
        solo, solo_loss = DiffusionProcess(member.config, precision="fp32"), {}
        start = [p.clone() for p in solo.model.parameters()]
        who = i if configs is not None else solo.config.seed  # how the fused losses are keyed
        train(solo, images, log=lambda n, v, s: solo_loss.setdefault((who, s), v) if n == "train.loss" else None)
        # the same draws in the same order: the generators end in the same state, the step counts agree
        assert torch.equal(member.train_generator.get_state(), solo.train_generator.get_state())
        assert member.step == solo.step == CONFIG.train_steps
        for key, value in solo_loss.items():
            assert fused_loss[key] == pytest.approx(value, rel=1e-5)
        moved = distance(solo.model.parameters(), start)
        assert distance(member.model.parameters(), solo.model.parameters()) < 1e-3 * moved
        assert distance(member.ema_model.parameters(), solo.ema_model.parameters()) < 1e-3 * moved
        adam = [s["exp_avg_sq"] for s in member.optimizer.state.values()]
        solo_adam = [s["exp_avg_sq"] for s in solo.optimizer.state.values()]
        assert distance(adam, solo_adam) < 1e-3 * torch.cat([v.flatten() for v in solo_adam]).norm()
        assert {float(s["step"]) for s in member.optimizer.state.values()} == {CONFIG.train_steps}
        # written back whole: the member samples, and goes on training, as its process
        torch.testing.assert_close(member.sample_as_configured(8, seed=5), solo.sample_as_configured(8, seed=5),
                                   atol=1e-3, rtol=0)
        member.train_step(images[:16])


def test_a_fused_group_repeats_and_resumes_from_its_members_checkpoints_bit_for_bit(images, tmp_path):
    straight, _ = fused_run(images)
    half, _ = fused_run(images, CONFIG.replace(train_steps=CONFIG.train_steps // 2))
    resumed = []
    for p in half:
        save_checkpoint(p, tmp_path / f"{p.config.seed}.pt")
        resumed.append(load_checkpoint(tmp_path / f"{p.config.seed}.pt", device="cpu"))
    for p in resumed:
        p.config = p.config.replace(train_steps=CONFIG.train_steps)  # the same run, given its whole budget
    train_fused(FusedTraining(resumed), images)
    again, _ = fused_run(images)
    for a, b, c in zip(straight, resumed, again):
        for x, y, z in zip(a.state_dict()["model"].values(), b.state_dict()["model"].values(),
                           c.state_dict()["model"].values()):
            assert torch.equal(x, y) and torch.equal(x, z)
        for x, y in zip(a.ema_model.parameters(), b.ema_model.parameters()):
            assert torch.equal(x, y)
        for s, r in zip(a.optimizer.state.values(), b.optimizer.state.values()):
            assert all(torch.equal(s[k], r[k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_stacked_adam_is_torch_adam_member_by_member_and_a_member_not_ok_keeps_its_state():
    g = torch.Generator().manual_seed(0)
    stacked = [torch.randn(3, 4, 5, generator=g).requires_grad_(), torch.randn(3, 7, generator=g).requires_grad_()]
    solo = [[w[i].detach().clone().requires_grad_() for w in stacked] for i in range(3)]
    adam = StackedAdam(stacked, lr=1e-2)
    torch_adams = [torch.optim.Adam(ws, lr=1e-2) for ws in solo]
    for ok in ([True, True, True], [False, True, True], [True, False, True], [True, True, True]):
        for w in stacked:
            w.grad = torch.randn(w.shape, generator=g)
            w.grad[[i for i, good in enumerate(ok) if not good]] = float("inf")  # an overflowed member
        for i, (ws, opt) in enumerate(zip(solo, torch_adams)):
            for w, s in zip(ws, stacked):
                w.grad = s.grad[i].clone()
            if ok[i]:
                opt.step()
        adam.step(torch.tensor(ok), [w.grad for w in stacked])
    for i in range(3):
        for w, s in zip(solo[i], stacked):
            torch.testing.assert_close(s[i], w, rtol=1e-6, atol=1e-7)
    assert adam.steps.tolist() == [3, 3, 4]  # each member counts only the steps it took


def test_stacked_grad_scaler_is_torch_grad_scaler_member_by_member():
    scales, trackers = [2.0 ** 16, 2.0 ** 10, 8.0], [5, GROWTH_INTERVAL - 1, GROWTH_INTERVAL - 1]
    stacked = StackedGradScaler(3, torch.device("cpu"), enabled=True)
    stacked.scale.copy_(torch.tensor(scales))
    stacked.growth_tracker.copy_(torch.tensor(trackers))
    grad = torch.tensor([[1.0, 2.0], [3.0, float("inf")], [4.0, 5.0]])  # member 1 overflowed
    unscaled = grad.clone()
    ok = stacked.unscale([unscaled])
    stacked.update(ok)
    assert ok.tolist() == [True, False, True]
    for i in range(3):
        scaler = torch.amp.GradScaler("cpu")
        scaler.scale(torch.zeros(()))  # its scale and tracker are made lazily, at the first scaling
        scaler.load_state_dict(scaler.state_dict() | {"scale": scales[i], "_growth_tracker": trackers[i]})
        w = torch.zeros(2, requires_grad=True)
        w.grad = grad[i].clone()
        scaler.step(torch.optim.SGD([w], lr=0.0))  # unscales the gradient, and skips the step after an overflow
        scaler.update()
        assert stacked.scale[i].item() == scaler.get_scale()
        assert stacked.growth_tracker[i].item() == scaler.state_dict()["_growth_tracker"]
        if ok[i]:
            assert torch.equal(unscaled[i], w.grad)


@pytest.mark.parametrize("change, words", [
    (dict(lr=1e-3), ["differ", "'lr'"]),
    (dict(dropout=0.1), ["dropout=0.1", "valid is 0.0"]),
    (dict(compile=True), ["compile=True", "valid is False"]),
])
def test_a_group_that_cannot_train_as_one_is_refused_by_name(change, words):
    group = [DiffusionProcess(CONFIG.replace(seed=0), precision="fp32"),
             DiffusionProcess(CONFIG.replace(seed=1, **change), precision="fp32")]
    if "differ" not in words:
        group[0] = DiffusionProcess(CONFIG.replace(seed=0, **change), precision="fp32")
    with pytest.raises(ValueError) as error:
        FusedTraining(group)
    assert all(word in str(error.value) for word in words)
    with pytest.raises(ValueError, match=r"invalid members \(seed, schedule\)=\[\(0, 'cosine'\), \(0, 'cosine'\)\]"):
        FusedTraining([DiffusionProcess(CONFIG, precision="fp32"), DiffusionProcess(CONFIG, precision="fp32")])


def test_fusion_benchmark_times_groups_and_checks_agreement(tmp_path):
    out = tmp_path / "fusion.json"
    fusion.main(["--scale", "smoke", "--set", "device=cpu", "amp=False", "--members", "1,2", "--steps", "1",
                 "--repeats", "1", "--agree-steps", "4", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [r["members"] for r in result["rows"]] == [1, 2]
    assert all(r["fusion_speedup_vs_sequential"] > 0 for r in result["rows"])
    assert result["agreement"]["repeats_bitwise"] is True
    assert result["agreement"]["weight_diff_over_moved"] < 1e-3


def test_fusion_benchmark_refuses_bad_values_before_work(capsys):
    with pytest.raises(SystemExit, match="invalid --members"):
        fusion.main(["--members", "0,3", "--out", "/nonexistent/x.json"])
    with pytest.raises(SystemExit, match="invalid dropout=0.1"):
        fusion.main(["--scale", "smoke", "--set", "device=cpu", "dropout=0.1", "--out", "/nonexistent/x.json"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 with loss scaling, and CUDA graphs, need a GPU")
def test_cuda_fp16_fused_members_follow_their_solo_runs_and_repeat(images):
    config = CONFIG.replace(device="cuda", train_steps=40, log_every=40)
    fused, fused_loss = fused_run(images, config, precision="fp16")
    again, _ = fused_run(images, config, precision="fp16")
    for member, twin in zip(fused, again):
        assert all(torch.equal(a, b) for a, b in zip(member.model.parameters(), twin.model.parameters()))
        solo = DiffusionProcess(member.config, precision="fp16")
        start = [p.clone() for p in solo.model.parameters()]
        train(solo, images)
        # fp16 rounds each member's kernels differently: within fp16's tolerance, not float32's (an overflow in
        # one and not the other may even change a loss scale, so the scales are not compared)
        assert distance(member.model.parameters(), solo.model.parameters()) < 0.1 * distance(
            solo.model.parameters(), start)


def assert_same(a, b, path="") -> None:
    """Two checkpoint states (nested dicts, lists, tensors) equal bit for bit."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), path
    else:
        assert a == b, path


def test_an_ema_groups_ema_off_twins_are_what_an_ema_off_group_leaves_bit_for_bit(tmp_path, capsys):
    """EMA never changes training: one EMA group serves its EMA-off cell (sweep.py --fuse trains the two once)."""
    words = ["smoke", "train_steps=6", "batch_size=16", "log_every=3", "amp=False", "threads=1"]
    assert fused_group.main(["--seeds", "0,1", "--out", str(tmp_path / "ema"), "--ema-off-twins",
                             "with", *words, "ema=True"]) == 0
    assert fused_group.main(["--seeds", "0,1", "--out", str(tmp_path / "off"), "with", *words]) == 0
    for seed in (0, 1):
        twin = load_state(fused_group.member_checkpoint(tmp_path / "ema", seed, "cosine", ema_off_twin=True))
        own = load_state(fused_group.member_checkpoint(tmp_path / "off", seed, "cosine"))
        losses = [[h for h in state["extra"].pop("history") if h[0] == "train.loss"] for state in (twin, own)]
        assert losses[0] == losses[1] and twin["extra"].pop("fused")["seeds"] == own["extra"].pop("fused")["seeds"]
        assert_same(twin, own)
        assert load_state(fused_group.member_checkpoint(tmp_path / "ema", seed, "cosine"))["ema"] is not None
    assert fused_group.main(["--seeds", "0", "--out", str(tmp_path / "x"), "--ema-off-twins", "with", *words]) == 2
    assert "invalid --ema-off-twins with ema=False" in capsys.readouterr().err
    assert fused_group.main(["--seeds", "0", "--schedules", "cosine,cosin", "--out", str(tmp_path / "x"),
                             "with", *words]) == 2
    assert "invalid --schedules cosine,cosin: valid values are distinct names from cosine, linear" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before any work


def test_a_stopped_group_leaves_its_members_and_resumes_to_what_an_unstopped_group_leaves_bit_for_bit(tmp_path):
    """SIGTERM (a stopped sweep's), with or without Ctrl-C, ends a group between two steps, each member's
    checkpoint left with its loss history and window; the same command resumes it, and it then leaves what a
    group never stopped leaves."""
    words = ["smoke", "train_steps=7", "batch_size=16", "log_every=3", "amp=False", "threads=1", "ema=True"]
    group = ["--seeds", "0,1", "--ema-off-twins", "with", *words]
    command = [sys.executable, str(REPO / "ablations" / "fused_group.py"), "--out", str(tmp_path / "stopped"), *group]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    output = ""
    for line in proc.stdout:  # up to the first logged point: the training is under way
        output += line
        if line.startswith("step 3: "):
            break
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reaches it with its sweep's SIGTERM: one stop, whole
    output += proc.communicate(timeout=120)[0]
    assert proc.returncode == fused_group.STOPPED_EXIT, output
    stopped = [load_state(fused_group.member_checkpoint(tmp_path / "stopped", seed, "cosine")) for seed in (0, 1)]
    at = stopped[0]["step"]
    assert all(state["extra"]["partial"] and state["step"] == at for state in stopped) and 3 <= at < 7, output
    assert not fused_group.member_checkpoint(tmp_path / "stopped", 0, "cosine", ema_off_twin=True).exists()
    member = fused_group.fresh_members(fused_group.group_config(words)[0], [(0, "cosine")])[0]
    with pytest.raises(ValueError, match=f"its group was stopped at step {at}; valid is the checkpoint of a finished"):
        restored_state(member, {"fused_checkpoint": fused_group.member_checkpoint(tmp_path / "stopped", 0, "cosine")})
    resumed = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0 and f"at step {at}" in resumed.stdout, resumed.stdout + resumed.stderr
    assert fused_group.main(["--out", str(tmp_path / "straight"), *group]) == 0
    for seed in (0, 1):
        for twin in (False, True):
            a, b = (load_state(fused_group.member_checkpoint(tmp_path / run, seed, "cosine", ema_off_twin=twin))
                    for run in ("stopped", "straight"))
            assert a["extra"].pop("fused")["resumed_at"] == [at] and "resumed_at" not in b["extra"].pop("fused")
            histories = [[h for h in state["extra"].pop("history") if h[0] == "train.loss"] for state in (a, b)]
            assert histories[0] == histories[1] and len(histories[0]) == 3  # steps 3, 6 and 7
            assert_same(a, b)


def test_a_stop_during_a_groups_set_up_waits_for_its_end_and_then_stops_it(monkeypatch):
    """A SIGTERM that lands while the group and its images are made (their first use imports modules, whose
    callbacks would print the stop and go on) is held to the set-up's end, then raised before any step."""
    loaded = []

    def images_then_a_stop(dataset):  # the real images; SIGTERM comes while they are made
        signal.raise_signal(signal.SIGTERM)
        loaded.append(as_tensor(dataset))
        return loaded[-1]

    monkeypatch.setattr(fused_group, "as_tensor", images_then_a_stop)
    members = fused_group.fresh_members(CONFIG, [(0, "cosine"), (1, "cosine")])
    previous = signal.signal(signal.SIGTERM, fused_group._terminate)  # as fused_group.main installs it
    try:
        with pytest.raises(fused_group.Terminated):
            fused_group.train_members(members)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert len(loaded) == 1 and loaded[0].shape == (60_000, 1, 28, 28)  # the set-up ended; then the stop
    assert [member.step for member in members] == [0, 0]  # before any step


def test_a_stop_while_a_trained_group_writes_its_members_is_ignored_and_every_member_is_written(tmp_path,
                                                                                              monkeypatch):
    """Raised while the members' checkpoints are written, a stop would leave some members at the group's end and
    others at an earlier stop's step, which no sitting can resume as one group: it is ignored there."""
    written, save_state = [], fused_group.save_state

    def a_stop_then_the_write(state, path):  # the real write; a SIGTERM comes with the first
        if not written:
            signal.raise_signal(signal.SIGTERM)
        written.append(path)
        return save_state(state, path)

    monkeypatch.setattr(fused_group, "save_state", a_stop_then_the_write)
    handler = signal.getsignal(signal.SIGTERM)
    words = ["smoke", "train_steps=2", "batch_size=16", "log_every=1", "amp=False", "threads=1"]
    assert fused_group.main(["--out", str(tmp_path), "--seeds", "0,1", "with", *words]) == 0
    states = [load_state(path) for path in written]
    assert len(states) == 2 and all(s["step"] == 2 and not s["extra"].get("partial") for s in states)
    assert signal.getsignal(signal.SIGTERM) is handler  # given back


def test_a_sweeps_group_folder_is_found_again_by_its_training_and_members_and_held_by_one_sweep(tmp_path,
                                                                                              monkeypatch):
    """ablations/jobs.py keeps a fused group's checkpoints in runs/fused/<group>/: the sweep's next run finds the
    folder again (also for some of its members only, its cells' names and sweep id aside), and a second sweep
    of this machine that finds it held trains in a folder apart."""
    monkeypatch.setenv("ABLATIONS_HOME", str(tmp_path))
    words, members = ["smoke", "ema=True", "sweep_id='sw-1'", "cell='ema=True'"], [[0, "cosine"], [1, "cosine"]]
    folder = jobs._group_dir(words, members)
    assert folder.parent == tmp_path / "fused"
    assert jobs._group_dir(["smoke", "ema=True", "sweep_id='sw-2'", "cell='baseline'"], [[1, "cosine"]]) == folder
    assert jobs._group_dir(["smoke", "ema=False"], [[1, "cosine"]]) != folder  # another training
    assert jobs._group_dir(words, [[2, "cosine"]]) != folder  # a member it lacks
    with jobs._held_group_dir(words, [[1, "cosine"]]) as (held, held_members):
        assert held == folder and held_members == members  # the whole group, as it was trained
        with jobs._held_group_dir(words, members) as (apart, _):
            assert apart != folder and apart.exists()
        assert not apart.exists()
