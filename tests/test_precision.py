"""What AMP computes in: the CPU's faster precision by default, recorded, and part of a run's identity."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ablations import plan
from ablations.record import config_hash, precision_of
from analysis import report
from analysis.reproduce import precision_refusal
from core import precision
from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import Config
from core.diffusion import DiffusionProcess

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU
COMMITTED = Path(__file__).resolve().parent.parent / "reports" / "runs.json"


def test_auto_is_the_faster_precision_of_this_device():
    assert precision.resolve_precision(True, CPU) == ("bf16" if precision.cpu_bf16_is_faster() else "fp32")
    assert precision.resolve_precision(True, CUDA) == "fp16"  # CUDA: the seed's fp16 + GradScaler, unchanged
    assert precision.resolve_precision(False, CPU) == precision.resolve_precision(False, CUDA) == "fp32"
    assert precision.resolve_precision(True, CPU, "bf16") == "bf16"  # forced, e.g. to re-execute a bf16 run


@pytest.fixture
def fresh_measurement(monkeypatch, tmp_path):
    """A CPU without AMX, never measured: an empty cache file, and the in-process answers forgotten."""
    monkeypatch.setattr(precision, "CACHE", tmp_path / "cpu_precision.json")
    monkeypatch.setattr(precision, "cpu_has_amx", lambda: False)
    precision.cpu_bf16_is_faster.cache_clear()
    precision._say_once.cache_clear()
    yield tmp_path / "cpu_precision.json"
    precision.cpu_bf16_is_faster.cache_clear()  # the next test sees this machine's own answer again


@pytest.mark.parametrize("bf16_s, runs_in", [(0.95, "fp32"), (0.5, "bf16")])
def test_a_cpu_without_amx_is_measured_once_and_amp_runs_at_the_faster_precision(
        fresh_measurement, monkeypatch, capsys, bf16_s, runs_in):
    measured = []
    monkeypatch.setattr(precision, "time_training_steps", lambda: measured.append(1) or {"fp32": 1.0, "bf16": bf16_s})
    assert [precision.resolve_precision(True, CPU) for _ in range(3)] == [runs_in] * 3
    entry = next(iter(json.loads(fresh_measurement.read_text()).values()))
    assert len(measured) == 1 and entry["fp32_s"] == 1.0 and entry["bf16_s"] == bf16_s
    assert entry["bf16_faster"] is (runs_in == "bf16")  # bf16 must save at least 10%
    said = capsys.readouterr().err.count("bf16 autocast is not faster than fp32 on this CPU")
    assert said == (1 if runs_in == "fp32" else 0)  # fp32 instead of the seed's AMP is said, once
    precision.cpu_bf16_is_faster.cache_clear()  # as in a new process: it reads the file, it does not measure
    assert precision.resolve_precision(True, CPU) == runs_in and len(measured) == 1


def test_the_measurement_times_real_training_steps_and_leaves_the_random_streams_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    seconds = precision.time_training_steps(batch=2, repeats=1)
    assert set(seconds) == {"fp32", "bf16"} and min(seconds.values()) > 0
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("amp, device, requested, valid", [
    (False, CPU, "fp16", "'auto' or 'fp32' or 'bf16'"),
    (True, CPU, "fp16", "'auto' or 'fp32' or 'bf16'"),
    (True, CUDA, "bf16", "'auto' or 'fp32' or 'fp16'"),
    (True, CPU, "half", "'auto' or 'fp32' or 'bf16'"),
])
def test_a_precision_the_device_cannot_run_is_refused_naming_the_valid_ones(amp, device, requested, valid):
    with pytest.raises(ValueError, match=f"invalid precision='{requested}'.*valid values are {valid}"):
        precision.resolve_precision(amp, device, requested)


def test_without_amp_every_valid_request_computes_in_fp32():
    """`with precision=bf16` applies to a whole sweep; its amp=False cell has no AMP to put in bf16."""
    assert {precision.resolve_precision(False, CPU, r) for r in ("auto", "fp32", "bf16")} == {"fp32"}


def test_amp_in_fp32_computes_exactly_what_amp_off_does(batch):
    """Where AMP has no faster precision, the amp toggle cannot change a single bit."""
    on, off = (DiffusionProcess(Config(noise_steps=20, amp=amp), device="cpu", precision="fp32")
               for amp in (True, False))
    assert on.precision == off.precision == "fp32" and on.amp_dtype == torch.float32
    assert [on.train_step(batch) for _ in range(3)] == [off.train_step(batch) for _ in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(on.model.parameters(), off.model.parameters()))


def test_a_checkpoint_reopens_in_the_precision_it_was_saved_in(tmp_path, batch):
    bf16 = DiffusionProcess(Config(noise_steps=20), device="cpu", precision="bf16")
    bf16.train_step(batch)
    save_checkpoint(bf16, tmp_path / "ckpt.pt")
    assert load_checkpoint(tmp_path / "ckpt.pt", device="cpu").precision == "bf16"


def test_the_committed_runs_keep_their_identity():
    """Every stored run's config hash, recomputed with the precision it ran in, is the one it recorded."""
    docs = json.loads(COMMITTED.read_text())
    assert {precision_of(d) for d in docs} == {"bf16", "fp32"}
    for doc in docs:
        assert config_hash(Config.from_mapping(doc["config"]), precision_of(doc)) == doc["info"]["config_hash"]
    # ... and the same config computed in fp32 with amp on is another cell
    baseline = Config.from_mapping(docs[0]["config"])
    assert config_hash(baseline, "fp32") != config_hash(baseline, "bf16") != config_hash(baseline, "fp16")
    # ... and so is one that samples with DDIM's eta (a field added after them); `with sampler_eta=1` is 1.0
    assert config_hash(baseline.replace(sampler_eta=1), "bf16") \
        == config_hash(baseline.replace(sampler_eta=1.0), "bf16") != config_hash(baseline, "bf16")
    # ... and one whose rate anneals (lr_schedule, added after them too; "constant" is what they trained at)
    assert config_hash(baseline.replace(lr_schedule="cosine"), "bf16") != config_hash(baseline, "bf16")


def test_the_sweep_id_names_the_precision_only_where_amp_is_not_the_devices_own():
    cells = plan.build("ofat", [0, 1, 2], ["small"])
    as_committed = dataclasses.replace(cells[0], precision="bf16")
    assert plan.sweep_id("ofat", None, ["small"], as_committed) == "sw-1b94665e5e"  # the committed `small` sweep
    in_fp32 = dataclasses.replace(cells[0], precision="fp32")
    assert plan.sweep_id("ofat", None, ["small"], in_fp32) != "sw-1b94665e5e"
    assert cells[0].precision == ("bf16" if precision.cpu_bf16_is_faster() else "fp32")
    assert {c.precision for c in cells if c.name == "amp=False"} == {"fp32"}


def _runs(dtype_of: dict[str, str]) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = [{"cell": cell, "seed": s, "dtype": dtype,
             "fid": 100 + s + (0 if dtype == dtype_of["baseline"] else rng.normal()),
             "kid_mean": 1.0, "precision": 0.5, "recall": 0.5} for cell, dtype in dtype_of.items() for s in range(3)]
    return pd.DataFrame(rows)


def test_the_report_says_when_amp_cannot_change_anything():
    def verdict(dtype_of):
        effects = report.tables(_runs(dtype_of))["effects"]
        return effects[effects.metric == "fid"].set_index("cell").verdict["amp=False"]

    assert verdict({"baseline": "fp32", "amp=False": "fp32"}).startswith(
        "AMP changes nothing on this device: both cells ran in fp32")
    assert "AMP changes nothing" not in verdict({"baseline": "bf16", "amp=False": "fp32"})


def test_runs_of_two_precisions_never_share_a_cell_in_the_report():
    from analysis.runs import separate_precisions

    runs = separate_precisions(_runs({"baseline": "fp32"}).assign(dtype=["fp32", "bf16", "fp32"]))
    assert sorted(runs.cell) == ["baseline [bf16]", "baseline [fp32]", "baseline [fp32]"]


def test_reproducing_a_run_of_a_precision_this_machine_cannot_run_is_refused_naming_both():
    doc = {"config": Config().to_dict(), "info": {"precision": "fp16", "environment": {"device_name": "NVIDIA H100"}}}
    reason = precision_refusal(doc)
    assert reason.startswith("the run computed in fp16") and f"compute in {plan.planned_precision(Config())}" in reason
    assert precision_refusal({"config": Config().to_dict(), "info": {"precision": "bf16"}}) is None
