"""FID, KID, precision/recall and a classifier score, on the features of the pinned MNIST classifier.

torch-fidelity does the metric maths; this module registers the classifier of
:mod:`core.classifier` as its feature extractor (penultimate 128-d features for FID, KID and
precision/recall; logits for the Inception-Score analogue). Nothing is downloaded, and CUDA is
used only when present. Metrics only: drawing samples to score is :mod:`core.evaluation`.

:func:`compare` calls torch-fidelity's metric functions on features it extracts once, and puts
precision/recall together from torch-fidelity's distance blocks, so that the k-NN radii of the real
reference, the same for every run, are computed once and cached beside its features: against the
10,000 test digits they were most of a small run's evaluation time. The values are those of
``torch_fidelity.calculate_metrics``, bit for bit (tests/test_fidelity.py).
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import fid_featuresdict_to_statistics_cached, fid_statistics_to_metric
from torch_fidelity.metric_isc import isc_featuresdict_to_metric
from torch_fidelity.metric_kid import kid_featuresdict_to_metric
from torch_fidelity.metric_prc import calc_cdist_part
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import (cache_lookup_one_recompute_on_miss, create_feature_extractor,
                                  extract_featuresdict_from_input_id_cached, get_cacheable_input_name)

from core.classifier import WEIGHTS_PATH, expected_sha256, load_classifier
from core.config import MIN_SAMPLES
from core.data import REPO_ROOT, mnist

EXTRACTOR = "mnist-classifier"
# Reference features are cached here, keyed by the classifier hash, the reference split and N.
CACHE_ROOT = Path(os.environ.get("FIDELITY_CACHE", REPO_ROOT / "data" / "fidelity_cache"))
REFERENCES = ("test", "train")
# Precision/recall (Kynkaanniemi et al. 2019): a point's ball reaches its 3rd nearest neighbour besides itself,
# torch-fidelity's default. Distances go in 1,000-row blocks instead of one 10k x 10k matrix: the same values
# (checked), 1.3 GB less peak memory.
PRC_NEIGHBORHOOD = 3
PRC_BLOCK = 1000


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


def reference_cache_name(reference: str, real: torch.Tensor) -> str:
    """The name under which the features of ``real`` (the split ``reference``, whole or a subset) are cached."""
    return f"mnist-{reference}-{len(real)}"


def _options(images: torch.Tensor, reference: torch.Tensor, reference_key: str | None, **metrics) -> dict:
    """torch-fidelity's options for uint8 ``images`` against uint8 ``reference`` on the classifier's features;
    ``reference_key`` names a reference whose features are cached on disk."""
    cache = reference_key is not None
    return dict(
        input1=_Images(images), input2=_Images(reference), feature_extractor=EXTRACTOR, cuda=torch.cuda.is_available(),
        batch_size=500, save_cpu_ram=True, verbose=False, cache=cache, cache_root=str(CACHE_ROOT),
        input2_cache_name=f"{reference_key}-{expected_sha256(WEIGHTS_PATH)[:16]}" if cache else None, **metrics)


def _calculate(images: torch.Tensor, reference: torch.Tensor, reference_key: str | None, **metrics) -> dict:
    """torch-fidelity's ``metrics`` of uint8 ``images`` against uint8 ``reference`` (see :func:`_options`)."""
    return torch_fidelity.calculate_metrics(**_options(images, reference, reference_key, **metrics))


def knn_radii(features: torch.Tensor) -> torch.Tensor:
    """(N,) distance of each of the (N, D) ``features`` to its PRC_NEIGHBORHOOD-th nearest other one (the
    nearest, at distance 0, is itself)."""
    return torch.cat([calc_cdist_part(block, features, PRC_BLOCK).kthvalue(PRC_NEIGHBORHOOD + 1).values
                      for block in features.split(PRC_BLOCK)])


def inside_any_ball(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """The share of ``points`` within ``radii`` of at least one of ``centres``."""
    return torch.cat([(calc_cdist_part(block, centres, PRC_BLOCK) <= radii).any(dim=1).float()
                      for block in points.split(PRC_BLOCK)]).mean().item()


def reference_radii(real: torch.Tensor, options: dict) -> torch.Tensor:
    """:func:`knn_radii` of the reference's (N, D) features ``real``, cached when ``options`` (:func:`_options`)
    name a cached reference."""
    name = f"{options['input2_cache_name']}-{EXTRACTOR}-prc-radii-k{PRC_NEIGHBORHOOD}"  # used with a cache only
    return cache_lookup_one_recompute_on_miss(name, lambda: knn_radii(real), **options)


def precision_recall(fake: torch.Tensor, real: torch.Tensor, real_radii: torch.Tensor) -> dict:
    """Precision (the share of samples inside some real digit's ball), recall (the share of real digits inside
    some sample's ball) and their F-score, of the (N, D) features ``fake`` against the (M, D) ``real``."""
    precision, recall = inside_any_ball(fake, real, real_radii), inside_any_ball(real, fake, knn_radii(fake))
    return {"precision": precision, "recall": recall, "f_score": 2 * precision * recall / max(1e-5, precision + recall)}


def compare(images: torch.Tensor, reference: torch.Tensor, reference_key: str | None = None) -> dict:
    """Metrics of uint8 ``images`` against uint8 ``reference``; ``reference_key`` names a cacheable reference."""
    n = min(len(images), len(reference))
    if n < MIN_SAMPLES:
        raise ValueError(f"invalid number of samples {n}: at least {MIN_SAMPLES} are needed")
    options = _options(images, reference, reference_key, isc_splits=min(10, len(images)),
                       kid_subset_size=kid_subset_size(n), kid_subsets=100)
    extractor = create_feature_extractor(EXTRACTOR, ["features", "logits"], **options)
    fake, real = (extract_featuresdict_from_input_id_cached(i, extractor, **options) for i in (1, 2))
    fid_stats = [fid_featuresdict_to_statistics_cached(features, get_cacheable_input_name(i, **options), extractor,
                                                       "features", **options) for i, features in ((1, fake), (2, real))]
    metrics = (fid_statistics_to_metric(*fid_stats, verbose=False)
               | kid_featuresdict_to_metric(fake, real, "features", **options)
               | isc_featuresdict_to_metric(fake, "logits", **options)
               | precision_recall(fake["features"], real["features"], reference_radii(real["features"], options)))
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


def class_share_range(histogram: list[int]) -> tuple[float, float]:
    """The smallest and largest share of one class in a :func:`class_histogram` (mode coverage in two numbers)."""
    total = sum(histogram)
    return min(histogram) / total, max(histogram) / total


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
    return compare(to_uint8(samples), real, reference_key=reference_cache_name(reference, real))


def real_floor(n: int, reference: str = "test") -> float:
    """FID of n real training digits against the reference: what "perfect" scores at this N."""
    real = reference_images(reference)
    # FID alone: the k-NN balls of precision/recall over the whole reference would cost more than the FID itself.
    metrics = _calculate(reference_images("train", n), real, reference_cache_name(reference, real), fid=True)
    return metrics["frechet_inception_distance"]
