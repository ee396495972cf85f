"""benchmarks/suite.py: the same sweep one run at a time and packed, compared part by part; its packed half alone
(``--packed-only``), which ``budget.py --choose`` projects only on a line; and, on a GPU, a pack equal to its solo
runs bit for bit."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from ablations import cuda_mps
from benchmarks import budget, suite


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_pack_equals_solo_and_repeats_bitwise(tmp_path):
    """On one GPU: a pack of 3 runs equals the same 3 runs one at a time, and the same pack again, bit for bit."""
    mps = ["--mps"] if shutil.which(cuda_mps.CONTROL) else []  # the GPU suite packs under MPS where it can
    sweep_args = ["--only", "attention,ema", "--seeds", "0", "with", "smoke", "device=cuda"]
    result = suite.main(["--pack", "3", *mps, "--work", str(tmp_path), "--", *sweep_args])
    assert result["runs"] == 3 and result["bitwise_equal"], result["per_run"]
    suite.timed_sweep([*mps, *sweep_args], 3, result["threads_per_run"], tmp_path / "again", dict(os.environ))
    again = suite.compare(suite.journal_records(tmp_path / "again"), suite.journal_records(tmp_path / "packed"))
    assert again["bitwise_equal"], again["per_run"]


def test_suite_benchmark_compares_every_part_and_refuses_bad_arguments():
    run = {"result": {"fid": 1.0}, "metrics": {"train.loss": [0.5]}, "weights": {"w": b"\x00"}}
    assert suite.compare({"a": run}, {"a": dict(run)})["bitwise_equal"]
    changed = suite.compare({"a": run}, {"a": run | {"weights": {"w": b"\x01"}}})
    assert not changed["bitwise_equal"]
    assert changed["per_run"]["a"] == {"result": True, "metrics": True, "weights": False}
    assert not suite.compare({"a": run}, {"a": run, "b": run})["bitwise_equal"]  # a run missing from the pack
    near = suite.compare({"a": run}, {"a": run | {"result": {"fid": 1.25}, "metrics": {"train.loss": [0.4]}}})
    assert near["largest_loss_rel_diff"] == pytest.approx(0.25) and near["largest_fid_rel_diff"] == pytest.approx(0.2)
    for bad in (["--pack", "1", "--", "with", "smoke"], ["--pack", "2", "--", "--seeds", "0"]):
        with pytest.raises(SystemExit):
            suite.main(bad)


def test_the_suite_benchmark_packed_only_times_the_pack_alone_which_choose_projects_only_on_a_line(tmp_path, capsys):
    """``--packed-only``: one packed journal-only sweep, its wall and phase medians, and no sequential twin; alone,
    such a result is refused by ``budget.py --choose``, which projects it only on a line through other budgets."""
    result = suite.main(["--pack", "2", "--packed-only", "--work", str(tmp_path), "--out", str(tmp_path / "suite.json"),
                         "--", "--only", "attention", "--seeds", "0", "with", "smoke"])
    assert result["runs"] == 2 and result["pack"] == 2 and set(result["phase_medians_s"]) == {"packed"}
    assert "sequential_s" not in result and "suite_speedup_vs_sequential" not in result
    assert not (tmp_path / "sequential").exists() and len(list(tmp_path.glob("packed/journal/*/offline/[0-9]*"))) == 2
    assert json.loads((tmp_path / "suite.json").read_text())["packed_s"] == result["packed_s"] > 0
    # Without --packed-only that half is written before the sequential sweep, which here cannot start (its home is a
    # file): a call cut short keeps it. The packed sweep finds its runs stored this time.
    (tmp_path / "sequential").write_text("not a directory")
    with pytest.raises(RuntimeError, match="the sweep with --pack 1 failed"):
        suite.main(["--pack", "2", "--work", str(tmp_path), "--out", str(tmp_path / "half.json"),
                    "--", "--only", "attention", "--seeds", "0", "with", "smoke"])
    half = json.loads((tmp_path / "half.json").read_text())
    assert half["runs"] == 2 and half["packed_s"] > 0 and "sequential_s" not in half
    point = {"ema": False, "classifier_score": 9.5, "fid": 9.0, "min_class_share": 0.09, "max_class_share": 0.11}
    (tmp_path / "curve.json").write_text(json.dumps([point | {"step": 10, "train_s": 1.0},
                                                     point | {"step": 20, "train_s": 2.0}]))
    with pytest.raises(SystemExit):
        budget.main(["--choose", str(tmp_path / "curve.json"), "--speedup", str(tmp_path / "suite.json")])
    assert "invalid suite result alone: packed only" in capsys.readouterr().err
