"""The metrics of a smoke run's 64 samples against the 10,000 test digits: torch-fidelity's own call, whose
precision/recall finds the k-NN radii of the 10,000 real digits again every time, against
:func:`core.fidelity.compare`, which caches those radii (the reference's features are cached in both).

    python benchmarks/prc_cache.py [--threads 1] [--repeats 5] [--out FILE.json]

Prints one JSON line: median seconds of each, their ratio, and whether the values agree bit for bit; ``--out``
also writes it, with the command and the machine. The cache is a fresh temporary folder, filled by one untimed
call of each.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.run import machine
from core import evaluation, fidelity
from core.arguments import integer_at_least, output_file


def median_seconds(call, repeats: int) -> tuple[float, dict]:
    times, result = [], call()  # the untimed call fills the cache
    for _ in range(repeats):
        started = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=integer_at_least("--threads"), default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=integer_at_least("--repeats"), default=5)
    parser.add_argument("--out", type=output_file("--out"),
                        help="also write the row here, with the command and the machine")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    real = fidelity.reference_images("test")
    samples = fidelity.to_uint8(evaluation.noisy(fidelity.reference_images("train", 64), 0.3))
    key = fidelity.reference_cache_name("test", real)
    with tempfile.TemporaryDirectory(prefix="prc-cache-") as cache:
        fidelity.CACHE_ROOT = Path(cache)
        theirs_s, theirs = median_seconds(lambda: fidelity._calculate(
            samples, real, key, fid=True, kid=True, isc=True, prc=True, isc_splits=10,
            kid_subset_size=fidelity.kid_subset_size(len(samples)), kid_subsets=100,
            prc_batch_size=fidelity.PRC_BLOCK), args.repeats)
        ours_s, ours = median_seconds(lambda: fidelity.compare(samples, real, key), args.repeats)
    names = {"fid": "frechet_inception_distance", "kid_mean": "kernel_inception_distance_mean",
             "classifier_score": "inception_score_mean", "precision": "precision", "recall": "recall"}
    row = {"threads": args.threads, "torch_fidelity_s": round(theirs_s, 4), "cached_radii_s": round(ours_s, 4),
           "speedup": round(theirs_s / ours_s, 1),
           "bitwise_equal": all(ours[name] == theirs[tf_name] for name, tf_name in names.items())}
    print(json.dumps(row))
    if args.out:
        command = "python benchmarks/prc_cache.py " + " ".join(sys.argv[1:] if argv is None else argv)
        args.out.write_text(json.dumps({"command": command, "machine": machine()} | row, indent=1) + "\n")
    return row


if __name__ == "__main__":
    main()
