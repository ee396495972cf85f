"""The MNIST classifier that FID, KID, precision/recall and the classifier score are measured with.

Metric values are comparable only under the same classifier, so it is part of the product:
trained deterministically by ``python -m core.classifier train``, shipped in ``core/weights/``
as safetensors with its SHA-256 beside it, verified on every load, and recorded by every run.

    python -m core.classifier train   # about 5 minutes on a 2-core CPU; rewrites the shipped weights
    python -m core.classifier eval    # test accuracy of the shipped weights (>= 99.0%)
"""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from core.data import as_tensor, batch_indices, mnist
from core.seeding import seed_everything

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "mnist_classifier.safetensors"
FEATURE_DIM = 128


class MNISTClassifier(nn.Module):
    """Three conv layers and two linear ones; the 128-d penultimate activations are the FID features.

    Input: (B, 1, 28, 28) in [-1, 1]. ``forward`` returns (features (B, 128), logits (B, 10)).
    """

    def __init__(self):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 14, 14)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 7, 7)
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(),  # (B, 128, 7, 7)
        )
        self.fc1 = nn.Linear(128 * 7 * 7, FEATURE_DIM)
        self.dropout = nn.Dropout(0.4)
        self.fc2 = nn.Linear(FEATURE_DIM, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = F.relu(self.fc1(self.conv(x).flatten(1)))  # (B, 128)
        return features, self.fc2(self.dropout(features))  # (B, 10)


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def expected_sha256(path: Path = WEIGHTS_PATH) -> str:
    """The pinned hash, from the ``.sha256`` file shipped beside the weights."""
    return Path(str(path) + ".sha256").read_text().split()[0]


def weights_sha256(path: Path = WEIGHTS_PATH) -> str:
    """The SHA-256 that runs record: the pinned hash, after checking the file against it."""
    load_classifier(path)
    return expected_sha256(path)


def load_classifier(path: Path = WEIGHTS_PATH, device: torch.device | str = "cpu") -> MNISTClassifier:
    """The shipped classifier in eval mode, after verifying the weights' SHA-256.

    :raises RuntimeError: when the file's hash differs from the pinned one.
    """
    path = Path(path)
    if not path.is_file():
        raise RuntimeError(f"classifier weights not found at {path}: run `python -m core.classifier train`")
    actual, expected = file_sha256(path), expected_sha256(path)
    if actual != expected:
        raise RuntimeError(f"classifier weights {path} have SHA-256 {actual}, but {expected} is pinned in "
                           f"{path}.sha256: the metric would not be comparable; restore the shipped file")
    model = MNISTClassifier()
    model.load_state_dict(load_file(path))
    return model.to(device).eval().requires_grad_(False)


def train_classifier(epochs: int = 4, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     log=print) -> MNISTClassifier:
    """Deterministic training on the 60k training images: Adam with a cosine decay to zero."""
    seed_everything(seed)
    dataset = mnist(train=True)
    images, labels = as_tensor(dataset), dataset.targets
    model = MNISTClassifier()
    steps = epochs * (len(images) // batch_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    started = time.perf_counter()
    for step in range(steps):
        idx = batch_indices(len(images), batch_size, step, seed)
        loss = F.cross_entropy(model(images[idx])[1], labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 200 == 0:
            log(f"step {step + 1}/{steps}  loss {loss.item():.4f}  {time.perf_counter() - started:.0f} s")
    return model.eval()


@torch.inference_mode()
def accuracy(model: MNISTClassifier, train: bool = False) -> float:
    dataset = mnist(train=train)
    logits = torch.cat([model(chunk)[1] for chunk in as_tensor(dataset).split(1000)])
    return (logits.argmax(1) == dataset.targets).float().mean().item()


def save_weights(model: MNISTClassifier, path: Path = WEIGHTS_PATH) -> str:
    """Write the weights and their SHA-256 (``sha256sum`` format) beside them; return the hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    digest = file_sha256(path)
    Path(str(path) + ".sha256").write_text(f"{digest}  {path.name}\n")
    return digest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train or evaluate the MNIST classifier used for FID.")
    parser.add_argument("command", choices=["train", "eval"])
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args(argv)
    if args.command == "train":
        model = train_classifier()
        digest = save_weights(model, args.out)
        print(f"wrote {args.out} (SHA-256 {digest}); test accuracy {accuracy(model):.2%}")
    else:
        print(f"{args.out}: SHA-256 {expected_sha256(args.out)} verified; "
              f"test accuracy {accuracy(load_classifier(args.out)):.2%}")


if __name__ == "__main__":
    main()
