"""FID, KID, precision/recall and a classifier score, on the features of the pinned MNIST classifier.

torch-fidelity does the metric maths; this module registers the classifier of
:mod:`core.classifier` as its feature extractor (penultimate 128-d features for FID, KID and
precision/recall; logits for the Inception-Score analogue). Nothing is downloaded, and CUDA is
used only when present.

    python -m core.fidelity calibrate [--ns 1000,5000,10000] [--checkpoint PATH]
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from core.classifier import WEIGHTS_PATH, expected_sha256, load_classifier
from core.config import MIN_SAMPLES
from core.data import REPO_ROOT, mnist

EXTRACTOR = "mnist-classifier"
# Reference features are cached here, keyed by the classifier hash, the reference split and N.
CACHE_ROOT = Path(os.environ.get("FIDELITY_CACHE", REPO_ROOT / "data" / "fidelity_cache"))
REFERENCES = ("test", "train")


class ClassifierFeatures(FeatureExtractorBase):
    """torch-fidelity extractor over :class:`core.classifier.MNISTClassifier` (uint8 (B, 1, 28, 28) input)."""

    def __init__(self, name, features_list, **kwargs):  # torch-fidelity passes all its options along
        super().__init__(name, features_list)
        self.classifier = load_classifier()

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 28, 28, dtype=torch.uint8)

    def forward(self, x: torch.Tensor):
        x = x.float().div(255).sub(0.5).div(0.5)  # uint8 -> [-1, 1], as the classifier was trained
        features, logits = self.classifier(x)
        out = {"features": features, "logits": logits}
        return tuple(out[name] for name in self.features_list)


def register() -> None:
    """Register the extractor with torch-fidelity; calling it again is a no-op."""
    if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(EXTRACTOR, ClassifierFeatures)


register()


class _Images(torch.utils.data.Dataset):
    """uint8 (N, 1, 28, 28) images as a Dataset, the input form torch-fidelity takes."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def to_uint8(samples: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 [0, 255], the inverse of the data scaling, rounded to nearest."""
    return ((samples.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def reference_images(reference: str = "test", n: int | None = None) -> torch.Tensor:
    """uint8 (n, 1, 28, 28) real images: the first n of a fixed seeded permutation of the split."""
    if reference not in REFERENCES:
        raise ValueError(f"invalid reference={reference!r}: valid values are {' or '.join(map(repr, REFERENCES))}")
    data = mnist(train=reference == "train").data  # (N, 28, 28) uint8
    if n is None:
        return data.unsqueeze(1)
    if not 1 <= n <= len(data):
        raise ValueError(f"invalid n={n}: valid values are 1 to {len(data)} for reference={reference!r}")
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    return data[order[:n]].unsqueeze(1)


def kid_subset_size(n: int) -> int:
    """KID's subset size: torch-fidelity's 1000, or half the samples below 2000 so that the
    100 subsets differ from each other and kid_std means something."""
    return min(1000, max(2, n // 2))


def compare(images: torch.Tensor, reference: torch.Tensor, reference_key: str | None = None) -> dict:
    """Metrics of uint8 ``images`` against uint8 ``reference``; ``reference_key`` names a cacheable reference."""
    n = min(len(images), len(reference))
    if n < MIN_SAMPLES:
        raise ValueError(f"invalid number of samples {n}: at least {MIN_SAMPLES} are needed")
    cache = reference_key is not None
    metrics = torch_fidelity.calculate_metrics(
        input1=_Images(images), input2=_Images(reference), feature_extractor=EXTRACTOR,
        fid=True, kid=True, prc=True, isc=True, isc_splits=min(10, len(images)),
        kid_subset_size=kid_subset_size(n), kid_subsets=100, cuda=torch.cuda.is_available(),
        # prc_batch_size: 1,000-row blocks of the k-NN distance matrices instead of one 10k x 10k
        # block; the same results (checked), 1.3 GB less peak memory.
        batch_size=500, prc_batch_size=1000, save_cpu_ram=True, verbose=False, cache=cache, cache_root=str(CACHE_ROOT),
        input2_cache_name=f"{reference_key}-{expected_sha256(WEIGHTS_PATH)[:16]}" if cache else None,
    )
    return {
        "fid": metrics["frechet_inception_distance"],
        "kid_mean": metrics["kernel_inception_distance_mean"],
        "kid_std": metrics["kernel_inception_distance_std"],
        "precision": metrics["precision"],
        "recall": metrics["recall"],
        "f_score": metrics["f_score"],
        "classifier_score": metrics["inception_score_mean"],
        "class_histogram": class_histogram(images),
    }


@torch.inference_mode()
def class_histogram(images: torch.Tensor) -> list[int]:
    """How many of the uint8 ``images`` the classifier puts in each digit class (mode coverage)."""
    extractor = ClassifierFeatures(EXTRACTOR, ["logits"])
    logits = torch.cat([extractor(chunk)[0] for chunk in images.split(1000)])
    return torch.bincount(logits.argmax(1), minlength=10).tolist()


def evaluate(samples: torch.Tensor, reference: str = "test", n: int | None = None) -> dict:
    """FID, KID, precision/recall, classifier score and class histogram of generated ``samples``.

    :param samples: float (N, 1, 28, 28) in [-1, 1]; converted to uint8 exactly once, as real data is stored.
    :param reference: the real split to compare with, "test" (10,000 images) or "train" (60,000).
    :param n: how many reference images (a fixed seeded subset); default the whole split.
    :return: dict with fid, kid_mean, kid_std, precision, recall, f_score, classifier_score, class_histogram.
    """
    if samples.ndim != 4 or tuple(samples.shape[1:]) != (1, 28, 28) or not samples.is_floating_point():
        raise ValueError(f"invalid samples of shape {tuple(samples.shape)} and dtype {samples.dtype}: "
                         "valid are float tensors of shape (N, 1, 28, 28) in [-1, 1]")
    real = reference_images(reference, n)
    return compare(to_uint8(samples), real, reference_key=f"mnist-{reference}-{len(real)}")


def sample_and_evaluate(process, seed: int, wall_s: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Draw a trained process's evaluation samples (its config's sampler and N) and score them.

    :param process: a :class:`core.diffusion.DiffusionProcess`.
    :param seed: seeds the sampler's noise.
    :param wall_s: when given, receives the seconds spent in the "sample" and "evaluate" phases.
    :return: (samples (N, 1, 28, 28) in [-1, 1], the metrics of :func:`evaluate` against the test split).
    """
    config, wall_s = process.config, {} if wall_s is None else wall_s
    started = time.perf_counter()
    samples = process.sample(config.n_samples, sampler=config.sampler, steps=config.sampler_steps, seed=seed)
    wall_s["sample"] = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate(samples, reference="test")
    wall_s["evaluate"] = time.perf_counter() - started
    return samples, metrics


def real_floor(n: int, reference: str = "test") -> float:
    """FID of n real training digits against the reference: what "perfect" scores at this N."""
    real = reference_images(reference)
    return compare(reference_images("train", n), real, reference_key=f"mnist-{reference}-{len(real)}")["fid"]


def noisy(images: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    """uint8 images with Gaussian noise of std ``sigma`` added on the [-1, 1] scale, as float samples."""
    x = images.float().div(255).sub(0.5).div(0.5)
    return (x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))).clamp(-1, 1)


def calibrate(ns: list[int], checkpoint: Path | None = None, n_model: int = 500, log=print) -> list[dict]:
    """What "good" is at a given N, and how far the fast sampler moves the metric.

    Rows: real train subset vs real test subset at each N; test + Gaussian noise (sigma 0.1, 0.3)
    vs test at the largest N; and, given a checkpoint, DDIM-50 vs ancestral-1000 samples of it.
    """
    rows = []

    def add(name: str, n: int, metrics: dict) -> None:
        rows.append({"comparison": name, "n": n} | {k: v for k, v in metrics.items() if k != "class_histogram"})
        log(f"{name:<44} N={n:>6}  FID {metrics['fid']:9.2f}  KID {metrics['kid_mean']:.4f}  "
            f"precision {metrics['precision']:.3f}  recall {metrics['recall']:.3f}")

    for n in ns:
        add("real train vs real test", n, compare(reference_images("train", n), reference_images("test", n)))
    n = max(ns)
    for sigma in (0.1, 0.3):
        add(f"test + N(0, {sigma}^2) noise vs test", n, evaluate(noisy(reference_images("test", n), sigma), "test", n))
    if checkpoint is not None:
        from core.checkpoint import load_checkpoint

        process = load_checkpoint(checkpoint)
        fast = process.sample(n_model, sampler="ddim", steps=50, seed=0)
        slow = process.sample(n_model, sampler="ancestral", seed=0, progress=True)
        add("DDIM-50 vs test", n_model, evaluate(fast, "test", n_model))
        add("ancestral-1000 vs test", n_model, evaluate(slow, "test", n_model))
        add("DDIM-50 vs ancestral-1000 (same model)", n_model, compare(to_uint8(fast), to_uint8(slow)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Calibrate the classifier-feature metrics.")
    parser.add_argument("command", choices=["calibrate"])
    parser.add_argument("--ns", default="1000,5000,10000", help="comma-separated N for real vs real")
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint, to compare DDIM-50 with ancestral-1000")
    parser.add_argument("--n-model", type=int, default=500, help="samples per sampler from the checkpoint")
    args = parser.parse_args(argv)
    calibrate([int(n) for n in args.ns.split(",")], args.checkpoint, args.n_model)


if __name__ == "__main__":
    main()
