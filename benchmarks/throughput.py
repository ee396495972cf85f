"""Training and sampling throughput of the seed model, fp32 against the AMP path.

    python benchmarks/throughput.py [--repeats 5]

Per device (the CPU, and CUDA when present) and precision it prints training images/s at
batch 128, sampling images/s for one denoising step at batch 256, and the achieved GFLOP/s
as a fraction of a 2048^2 matmul of the same precision timed in the same process. The
contenders alternate inside each repeat and medians are quoted, since these machines are noisy.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.diffusion import DiffusionProcess


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of an n x n matmul, median of 5."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    return 2 * n**3 / statistics.median(timed(lambda: a @ b, device) for _ in range(5)) / 1e9


def contenders(device: torch.device) -> dict[str, DiffusionProcess]:
    amp_name = "amp-fp16" if device.type == "cuda" else "amp-bf16"
    return {"fp32": DiffusionProcess(device=device, amp=False), amp_name: DiffusionProcess(device=device, amp=True)}


def bench_device(device: torch.device, repeats: int) -> list[dict]:
    train_x = torch.rand(128, 1, 28, 28, device=device) * 2 - 1  # (B, C, H, W)
    sample_x, sample_t = torch.randn(256, 1, 28, 28, device=device), torch.full((256,), 500, device=device)
    procs = contenders(device)

    def train(p):
        return lambda: p.train_step(train_x)

    def denoise(p):
        def step():
            with torch.inference_mode(), p.autocast():
                p.model.eval()(sample_x, sample_t)
        return step

    flops = {name: (count_flops(train(p)), count_flops(denoise(p))) for name, p in procs.items()}
    times = {name: ([], []) for name in procs}
    for _ in range(repeats):  # alternate the contenders inside each repeat
        for name, p in procs.items():
            times[name][0].append(timed(train(p), device))
            times[name][1].append(timed(denoise(p), device))
    peaks = {"fp32": matmul_peak(device, torch.float32)}
    peaks["amp"] = matmul_peak(device, torch.float16 if device.type == "cuda" else torch.bfloat16)
    rows = []
    for name in procs:
        train_s, sample_s = statistics.median(times[name][0][1:]), statistics.median(times[name][1][1:])
        train_gflops = flops[name][0] / train_s / 1e9
        peak = peaks["fp32" if name == "fp32" else "amp"]
        rows.append(dict(device=device.type, path=name, train_img_s=128 / train_s, sample_img_s=256 / sample_s,
                         train_gflop_s=train_gflops, peak_gflop_s=peak, fraction_of_peak=train_gflops / peak))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=6, help="timed repeats per contender (the first is dropped)")
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print(f"{'device':<7}{'path':<10}{'train img/s':>12}{'sample img/s':>13}{'train GFLOP/s':>14}"
          f"{'matmul peak':>12}{'of peak':>9}")
    for device in devices:
        for r in bench_device(device, args.repeats):
            print(f"{r['device']:<7}{r['path']:<10}{r['train_img_s']:>12.1f}{r['sample_img_s']:>13.1f}"
                  f"{r['train_gflop_s']:>14.1f}{r['peak_gflop_s']:>12.1f}{r['fraction_of_peak']:>9.1%}")


if __name__ == "__main__":
    main()
