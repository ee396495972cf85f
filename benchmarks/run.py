"""Training and sampling speed of our default path against diffusers at a matched size, side by side.

    python benchmarks/run.py [--quick] [--devices cpu,cuda] [--out benchmarks/results.json]

In one process, per device (the CPU, and CUDA when present), it times:
  1. one training step at batch 128 and one ancestral denoising step at batch 256, alternating the
     contenders inside every repeat and quoting medians (these machines are noisy);
  2. the end-to-end time to 1,000 samples with 50 network evaluations (our DDIM-50 against
     diffusers' DDPMPipeline with num_inference_steps=50) and with ancestral-1000 (on the CPU this
     one is extrapolated from the timed step, about 40 min per contender otherwise; marked "est");
  3. achieved GFLOP/s (torch.utils.flop_counter) as a fraction of a 2048^2 matmul timed here;
  4. peak RSS of this process and of a child process shaped like a `small` run (its batch, its
     1,000 samples, FID on them) but with 20 training steps.
The contenders: ours (the Config defaults: AMP, channels_last), ours in fp32, diffusers'
UNet2DModel + DDPMScheduler in its default fp32 eager mode and with the same AMP as ours.
It prints a table and writes ``results.json`` with the ratios the targets are stated in.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.contenders import Diffusers, Ours, amp_dtype
from core.arguments import output_file
from core.diffusion import GRAPH_WARMUP_STEPS
from core.provenance import peak_rss_mb

TRAIN_BATCH, STEP_BATCH, N_SAMPLES = 128, 256, 1000
TARGETS = {"train_speedup_vs_diffusers": 2.5, "train_speedup_vs_diffusers_same_precision": 1.3,
           "sample_speedup_vs_diffusers": 4.0, "train_fraction_of_bf16_peak": 0.35, "small_run_peak_rss_mb": 1536}
SMALL_RUN = r"""
import torch
from core.config import Config
from core.data import as_tensor, mnist
from core.diffusion import DiffusionProcess
from core.evaluation import sample_and_evaluate
from core.fidelity import real_floor
from core.train import train
config = Config(train_steps=20)  # the `small` scale, except for the number of steps
process = DiffusionProcess(config)
train(process, as_tensor(mnist(train=True)))
sample_and_evaluate(process, seed=0), real_floor(config.n_samples)
from core.provenance import peak_rss_mb
print(peak_rss_mb())
"""


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """GFLOP/s of an n x n matmul, median of 5 after a warm-up."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    return 2 * n**3 / statistics.median(timed(lambda: a @ b, device) for _ in range(5)) / 1e9


def make_contenders(device: torch.device, quick: bool) -> dict:
    contenders = {"ours": Ours(device), "ours-fp32": Ours(device, amp=False),
                  "diffusers": Diffusers(device), "diffusers-amp": Diffusers(device, amp=True)}
    if not quick:
        contenders["ours+compile"] = Ours(device, compile=True)
    return contenders


def time_steps(contenders: dict, device: torch.device, repeats: int) -> dict:
    """Median seconds of one training step and one denoising step per contender, alternating them."""
    x0 = torch.rand(TRAIN_BATCH, 1, 28, 28, device=device) * 2 - 1  # (B, C, H, W) in [-1, 1]
    x_t = torch.randn(STEP_BATCH, 1, 28, 28, device=device)
    t = torch.full((STEP_BATCH,), 500, device=device)
    for c in contenders.values():  # warm-up: allocator, oneDNN primitives, compilation, our CUDA-graph capture
        for _ in range(GRAPH_WARMUP_STEPS + 1 if device.type == "cuda" else 1):
            c.train_step(x0)
        c.denoise_step(x_t, t)
    times = {name: {"train": [], "denoise": []} for name in contenders}
    for _ in range(repeats):
        for name, c in contenders.items():
            times[name]["train"].append(timed(lambda: c.train_step(x0), device))
            times[name]["denoise"].append(timed(lambda: c.denoise_step(x_t, t), device))
    # The counter sees eager kernels only, not the replay of our CUDA-graphed step: count an eager one.
    flops = {name: {"train": count_flops(lambda: c.train_step(x0, cuda_graph=False) if isinstance(c, Ours)
                                         else c.train_step(x0)),
                    "denoise": count_flops(lambda: c.denoise_step(x_t, t))} for name, c in contenders.items()}
    return {name: {kind: {"s": statistics.median(v), "flop": flops[name][kind]} for kind, v in kinds.items()}
            for name, kinds in times.items()}


def time_end_to_end(contenders: dict, device: torch.device, steps: dict, quick: bool) -> dict:
    """Seconds to N_SAMPLES samples with 50 evaluations and with ancestral-1000 (CPU: estimated)."""
    names = ["ours", "diffusers"] if quick else ["ours", "ours-fp32", "diffusers", "diffusers-amp"]
    out = {}
    for name in names:
        c = contenders[name]
        out[name] = {"fast50_s": timed(lambda: c.sample(N_SAMPLES, 50), device)}
        if device.type == "cuda":
            out[name]["ancestral1000_s"] = timed(lambda: c.sample(N_SAMPLES, 1000), device)
        else:  # 1000 steps x ceil(N / 256) batches of the timed step
            out[name]["ancestral1000_s_est"] = 1000 * steps[name]["denoise"]["s"] * N_SAMPLES / STEP_BATCH
    return out


def small_run_rss_mb() -> float:
    """Peak RSS (MiB) of a child process shaped like a `small` run, with 20 training steps."""
    done = subprocess.run([sys.executable, "-c", SMALL_RUN], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    return float(done.stdout.split()[-1])


def summarise(device: torch.device, steps: dict, e2e: dict, peaks: dict, precision: dict) -> dict:
    train_rate = {n: TRAIN_BATCH / v["train"]["s"] for n, v in steps.items()}
    same = "diffusers-amp" if precision["ours"] != "float32" else "diffusers"
    ours_train_gflops = steps["ours"]["train"]["flop"] / steps["ours"]["train"]["s"] / 1e9
    return {
        "train_speedup_vs_diffusers": train_rate["ours"] / train_rate["diffusers"],
        "train_speedup_vs_diffusers_same_precision": train_rate["ours"] / train_rate[same],
        "sample_speedup_vs_diffusers": e2e["diffusers"]["fast50_s"] / e2e["ours"]["fast50_s"],
        "train_fraction_of_bf16_peak" if device.type == "cpu" else "train_fraction_of_fp16_peak":
            ours_train_gflops / peaks[str(amp_dtype(device)).removeprefix("torch.")],
    }


def bench_device(device: torch.device, quick: bool) -> dict:
    contenders = make_contenders(device, quick)
    precision = {n: c.precision for n, c in contenders.items()}
    params = {n: sum(p.numel() for p in c.model.parameters()) for n, c in contenders.items()}
    steps = time_steps(contenders, device, repeats=3 if quick else 7)
    e2e = time_end_to_end(contenders, device, steps, quick)
    peaks = {str(d).removeprefix("torch."): matmul_peak(device, d) for d in (torch.float32, amp_dtype(device))}
    rows = []
    for name, s in steps.items():
        gflops = s["train"]["flop"] / s["train"]["s"] / 1e9
        rows.append({"contender": name, "precision": precision[name], "params": params[name],
                     "train_img_s": TRAIN_BATCH / s["train"]["s"], "denoise_img_s": STEP_BATCH / s["denoise"]["s"],
                     "train_gflop_s": gflops, "fraction_of_peak": gflops / peaks[precision[name]],
                     **e2e.get(name, {})})
    return {"rows": rows, "matmul_peak_gflop_s": peaks, **summarise(device, steps, e2e, peaks, precision)}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "amx": "amx_bf16" in flags, "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "python": platform.python_version()}


def print_table(device: str, result: dict) -> None:
    print(f"\n{device}: {'contender':<14}{'precision':<10}{'params':>10}{'train img/s':>12}{'denoise img/s':>14}"
          f"{'of peak':>9}{'1k DDIM/DDPM-50 s':>19}{'1k ancestral s':>16}")
    for r in result["rows"]:
        anc = r.get("ancestral1000_s", r.get("ancestral1000_s_est"))
        est = " est" if "ancestral1000_s_est" in r else ""
        print(f"{'':<{len(device) + 2}}{r['contender']:<14}{r['precision']:<10}{r['params']:>10,}"
              f"{r['train_img_s']:>12.1f}{r['denoise_img_s']:>14.1f}{r['fraction_of_peak']:>9.1%}"
              f"{r.get('fast50_s', float('nan')):>19.1f}{'' if anc is None else f'{anc:.0f}{est}':>16}")
    for key, value in result.items():
        if key not in ("rows", "matmul_peak_gflop_s"):
            print(f"  {key} = {value:.2f}" + (f"  (target {TARGETS[key]})" if key in TARGETS else ""))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and contenders; 6-9 min on 2 cores")
    parser.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=output_file("--out"), default=Path(__file__).resolve().parent / "results.json")
    parser.add_argument("--rss-only", action="store_true", help="only re-measure the small-run peak RSS in --out")
    args = parser.parse_args(argv)
    if args.rss_only:
        results = json.loads(args.out.read_text())
        results["small_run_peak_rss_mb"] = small_run_rss_mb()
        results["rss_command"] = "python benchmarks/run.py --rss-only"
        finish(results, args.out)
        return
    valid = {"cpu"} | ({"cuda"} if torch.cuda.is_available() else set())
    devices = args.devices.split(",")
    if not set(devices) <= valid:
        parser.error(f"invalid --devices={args.devices!r}: valid values are {', '.join(sorted(valid))}")
    started = time.perf_counter()
    results = {"command": "python benchmarks/run.py" + (" --quick" if args.quick else ""),
               "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    for name in devices:
        results[name] = bench_device(torch.device(name), args.quick)
        print_table(name, results[name])
    results["small_run_peak_rss_mb"] = small_run_rss_mb()
    results["benchmark_peak_rss_mb"] = peak_rss_mb()
    results |= {k: v for k, v in results.get("cpu", {}).items() if k in TARGETS}  # targets are for the CPU
    results["wall_s"] = time.perf_counter() - started
    finish(results, args.out)


def finish(results: dict, out: Path) -> None:
    """Check the targets and write ``out``."""
    results["targets"] = {k: {"value": results[k], "target": t, "met": bool(results[k] <= t if k.endswith("_mb")
                                                                          else results[k] >= t)}
                          for k, t in TARGETS.items() if k in results}
    out.write_text(json.dumps(results, indent=1))
    print(f"\nsmall-run peak RSS {results['small_run_peak_rss_mb']:.0f} MiB; wrote {out}")


if __name__ == "__main__":
    main()
