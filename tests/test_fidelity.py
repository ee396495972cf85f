import json
import shutil
import subprocess
import sys

import pytest
import torch

from core import fidelity
from core.classifier import WEIGHTS_PATH, accuracy, file_sha256, load_classifier
from core import evaluation
from core.checkpoint import save_checkpoint
from core.config import SCALES, Config
from core.diffusion import DiffusionProcess


def test_shipped_weights_reach_99_percent():
    assert accuracy(load_classifier()) >= 0.99


def test_hash_mismatch_is_a_clear_error(tmp_path):
    path = tmp_path / WEIGHTS_PATH.name
    shutil.copy(WEIGHTS_PATH, path)
    shutil.copy(str(WEIGHTS_PATH) + ".sha256", str(path) + ".sha256")
    load_classifier(path)  # the untouched copy loads
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # one weight byte
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match=f"SHA-256 {file_sha256(path)}.*pinned"):
        load_classifier(path)


def test_real_vs_real_is_low_and_noise_is_far_above():
    train, test = fidelity.reference_images("train", 2000), fidelity.reference_images("test", 2000)
    real = fidelity.compare(train, test)["fid"]
    noisy = fidelity.compare(fidelity.to_uint8(evaluation.noisy(test, 0.3)), test)["fid"]
    assert real < 15 and noisy > 5 * real


def test_real_digits_score_5x_lower_than_noisy_digits():
    """The issue's bar: 5k real training digits against 5k test digits with sigma = 0.2 noise ([-1, 1] scale)."""
    real = fidelity.evaluate(evaluation.noisy(fidelity.reference_images("train", 5000), 0.0))
    noisy = fidelity.evaluate(evaluation.noisy(fidelity.reference_images("test", 5000), 0.2))
    assert noisy["fid"] >= 5 * real["fid"]
    assert sum(real["class_histogram"]) == 5000 and min(real["class_histogram"]) > 350  # every digit present
    assert set(real) >= {"fid", "kid_mean", "kid_std", "precision", "recall", "f_score", "classifier_score"}
    assert real["classifier_score"] > 8  # confident and balanced over 10 classes: close to 10


def test_the_real_floor_is_the_fid_that_every_metric_together_gives():
    """real_floor computes FID alone (no k-NN balls): the same number as the full comparison of the same digits."""
    full = fidelity.compare(fidelity.reference_images("train", 64), fidelity.reference_images("test"),
                            "mnist-test-10000")
    assert fidelity.real_floor(64) == full["fid"] and full["fid"] > 0


def test_compare_gives_torch_fidelitys_metrics_bit_for_bit_and_caches_the_reference_radii(tmp_path, monkeypatch):
    """compare() extracts features once and keeps the real reference's k-NN radii in the cache; every metric
    stays what torch_fidelity.calculate_metrics gives, with several 1,000-row blocks on both sides, uncached,
    then cached (computed, then read back)."""
    monkeypatch.setattr(fidelity, "CACHE_ROOT", tmp_path)
    names = {"fid": "frechet_inception_distance", "kid_mean": "kernel_inception_distance_mean",
             "kid_std": "kernel_inception_distance_std", "classifier_score": "inception_score_mean",
             "precision": "precision", "recall": "recall", "f_score": "f_score"}
    samples = fidelity.to_uint8(evaluation.noisy(fidelity.reference_images("train", 1300), 0.4))
    for images, reference, key in ((samples, fidelity.reference_images("test", 2100), None),
                                   (samples[:64], fidelity.reference_images("test", 1200), "mnist-test-1200"),
                                   (samples[64:128], fidelity.reference_images("test", 1200), "mnist-test-1200")):
        ours = fidelity.compare(images, reference, key)
        n = min(len(images), len(reference))
        theirs = fidelity._calculate(images, reference, key, fid=True, kid=True, isc=True, prc=True,
                                     isc_splits=min(10, len(images)), kid_subset_size=fidelity.kid_subset_size(n),
                                     kid_subsets=100, prc_batch_size=fidelity.PRC_BLOCK)
        assert {name: ours[name] for name in names} == {name: theirs[tf_name] for name, tf_name in names.items()}
        assert 0 < ours["precision"] < 1 and 0 < ours["recall"] < 1  # neither trivially 0 nor 1
    assert len(list(tmp_path.glob("mnist-test-1200-*-prc-radii-k3.pt"))) == 1


def test_kid_works_at_200_samples():
    real = fidelity.evaluate(evaluation.noisy(fidelity.reference_images("train", 200), 0.0), "test", n=200)
    noisy = fidelity.evaluate(evaluation.noisy(fidelity.reference_images("train", 200), 0.4), "test", n=200)
    assert fidelity.kid_subset_size(200) == 100 and real["kid_std"] > 0
    assert abs(real["kid_mean"]) < 3 * real["kid_std"]  # unbiased: real vs real is zero within its spread
    assert noisy["kid_mean"] > real["kid_mean"] + 3 * real["kid_std"]


def test_reference_cache_is_keyed_by_classifier_hash_split_and_n():
    fidelity.evaluate(evaluation.noisy(fidelity.reference_images("train", 300), 0.0), "test", n=300)
    key = f"mnist-test-300-{fidelity.expected_sha256(WEIGHTS_PATH)[:16]}"
    assert any(p.name.startswith(key) for p in fidelity.CACHE_ROOT.iterdir())


def test_registering_twice_is_harmless():
    """torch-fidelity raises when a name is registered twice; ours registers once and evaluates after."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    fidelity.register()
    fidelity.register()
    assert FEATURE_EXTRACTORS_REGISTRY[fidelity.EXTRACTOR] is fidelity.ClassifierFeatures
    with pytest.raises(ValueError):  # what register() guards against
        fidelity.torch_fidelity.register_feature_extractor(fidelity.EXTRACTOR, fidelity.ClassifierFeatures)
    assert fidelity.compare(fidelity.reference_images("train", 20), fidelity.reference_images("test", 20))["fid"] > 0


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match=r"shape \(4, 3, 28, 28\)"):
        fidelity.evaluate(torch.zeros(4, 3, 28, 28))
    with pytest.raises(ValueError, match="reference='val'"):
        fidelity.evaluate(torch.zeros(4, 1, 28, 28), reference="val")
    with pytest.raises(ValueError, match="n=20000"):
        fidelity.evaluate(torch.zeros(4, 1, 28, 28), n=20000)


@pytest.mark.parametrize("ns", ["1000,x", "2,1000", "1000,20000"])
def test_calibrate_refuses_a_bad_n_before_any_work(ns, capsys):
    with pytest.raises(SystemExit):
        evaluation.main(["calibrate", "--ns", ns])
    assert f"invalid --ns '{ns}': valid values are comma-separated integers from 4 to 10000" in capsys.readouterr().err


@pytest.mark.parametrize("words, message", [
    (["--checkpoint", "{tmp}/none.pt"], "invalid --checkpoint '{tmp}/none.pt' (FileNotFoundError"),
    (["--checkpoint", "{tmp}/notes.txt"], "invalid --checkpoint '{tmp}/notes.txt' (UnpicklingError"),
    (["--n-model", "0"], "invalid --n-model '0': valid values are integers from 4 to 10000"),
    (["--out", "{tmp}/notes.txt/rows.json"], "invalid --out '{tmp}/notes.txt/rows.json': {tmp}/notes.txt is a file"),
])
def test_calibrate_refuses_a_bad_checkpoint_count_or_out_before_any_work(words, message, tmp_path, capsys):
    """These failed once the real digits had been scored (a traceback), or, for --n-model 0, not at all."""
    (tmp_path / "notes.txt").write_text("not a checkpoint\n")
    with pytest.raises(SystemExit) as exit_:
        evaluation.main(["calibrate", *[word.format(tmp=tmp_path) for word in words]])
    assert exit_.value.code == 2 and message.format(tmp=tmp_path) in capsys.readouterr().err


def test_calibrate_writes_its_rows_and_its_command_with_out(tmp_path, capsys):
    """``--out`` keeps what the calibration printed (the README's tables quote two such files)."""
    out = tmp_path / "calibration" / "eight.json"
    evaluation.main(["calibrate", "--ns", "8", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["command"] == f"python -m core.evaluation calibrate --ns 8 --out {out}"
    assert [(row["comparison"], row["n"]) for row in written["rows"]] == [("real train vs real test", 8), (
        "test + N(0, 0.1^2) noise vs test", 8), ("test + N(0, 0.3^2) noise vs test", 8)]
    printed = capsys.readouterr().out.splitlines()
    assert [f"FID {row['fid']:9.2f}" in line for row, line in zip(written["rows"], printed)] == [True] * 3


def test_calibrate_with_a_checkpoint_records_which_model_its_sampler_rows_scored(tmp_path):
    """The DDIM-50 against ancestral-1000 rows come from one model: ``--out`` names it by its file's hash and the
    config it trained with, so the README's sampler table can say which run it quotes."""
    config = Config.from_mapping(SCALES["smoke"]).replace(seed=3, hidden_dims=(8, 16, 32), time_dim=16)  # a quick one
    checkpoint = save_checkpoint(DiffusionProcess(config), tmp_path / "checkpoint.pt")
    out = tmp_path / "sampler.json"
    evaluation.main(["calibrate", "--ns", "4", "--checkpoint", str(checkpoint), "--n-model", "4", "--out", str(out)])
    written = json.loads(out.read_text())
    assert [row["comparison"] for row in written["rows"]][3:] == [
        "DDIM-50 vs test", "ancestral-1000 vs test", "DDIM-50 vs ancestral-1000 (same model)"]
    assert written["checkpoint"] == {"sha256": file_sha256(checkpoint), "step": 0, "config": config.to_dict()}


def test_to_uint8_inverts_the_data_scaling():
    real = fidelity.reference_images("test", 50)
    assert torch.equal(fidelity.to_uint8(real.float().div(255).sub(0.5).div(0.5)), real)


NO_NETWORK = r"""
import socket
def refuse(*args, **kwargs):
    raise RuntimeError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
from core import fidelity
from core import evaluation
m = fidelity.evaluate(evaluation.noisy(fidelity.reference_images("train", 200), 0.0), "test", n=200)
print("fid", m["fid"])
"""


def test_nothing_is_fetched_from_the_network(tmp_path):
    """With sockets refused and an empty TORCH_HOME, evaluation still works and writes nothing there."""
    env = {"TORCH_HOME": str(tmp_path / "torch_home"), "FIDELITY_CACHE": str(tmp_path / "cache"), "PATH": ""}
    out = subprocess.run([sys.executable, "-c", NO_NETWORK], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("fid") and not (tmp_path / "torch_home").exists()


def test_same_seed_gives_same_ddim_samples(tiny_process):
    a = tiny_process.sample(4, sampler="ddim", steps=5, seed=3)
    assert torch.equal(a, tiny_process.sample(4, sampler="ddim", steps=5, seed=3))
    assert not torch.equal(a, tiny_process.sample(4, sampler="ddim", steps=5, seed=4))
