"""Each fast path changes speed only: fp32 outputs equal the plain path to float rounding, bf16/fp16 to
their tolerance, and the seeded draws are untouched. The CUDA tests run where a GPU is present."""
import subprocess
import sys

import pytest
import torch

from core.diffusion import DiffusionProcess
from core.fastpath import GroupNorm

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
BATCH = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(5)) * 2 - 1  # (B, C, H, W)
STEPS = torch.arange(0, 1000, 1000 // 16)[:16]  # (B,) timesteps across the schedule


def pair(device="cpu", **options):
    """Two processes with the same seed: the plain eager NCHW fp32 one and one with ``options``."""
    plain = DiffusionProcess(device=device, amp=False, channels_last=False, seed=0)
    fast = DiffusionProcess(device=device, **({"amp": False, "channels_last": False, "seed": 0} | options))
    return plain, fast


@torch.inference_mode()
def eps_of(process, x=BATCH, t=STEPS):
    process.model.eval()
    return process._denoiser()(x.to(process.device), t.to(process.device)).cpu()


def flat_weights(process):
    return torch.cat([p.detach().flatten().cpu() for p in process.model.parameters()])


def test_channels_last_changes_layout_not_results():
    plain, fast = pair(channels_last=True)
    assert fast.model.init_conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(flat_weights(plain), flat_weights(fast))  # same initial weights
    torch.testing.assert_close(eps_of(fast), eps_of(plain), rtol=1e-5, atol=1e-5)
    for _ in range(3):
        assert fast.train_step(BATCH) == pytest.approx(plain.train_step(BATCH), rel=1e-5)
    # Adam divides by sqrt(v): a near-zero gradient's rounding can move a weight by a fraction of lr.
    torch.testing.assert_close(flat_weights(fast), flat_weights(plain), rtol=1e-4, atol=0.5 * fast.config.lr)


def test_bf16_autocast_on_cpu_within_bf16_tolerance():
    plain, fast = pair(amp=True, channels_last=True, precision="bf16")  # forced: "auto" is fp32 without AMX
    assert fast.amp_dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%); through ~20 layers errors add up.
    torch.testing.assert_close(eps_of(fast), eps_of(plain), rtol=0.05, atol=0.05)


def test_the_group_norm_route_samples_the_same_bits_and_leaves_training_alone(monkeypatch):
    """bf16 channels_last on the CPU without autograd: groups of 4 and 8 channels normalised in fp32, then rounded
    back, give the native kernel's samples bit for bit; wider groups, fp32, NCHW and autograd keep the kernel."""
    process = DiffusionProcess(device="cpu", amp=True, channels_last=True, precision="bf16", seed=0)
    process.train_step(BATCH)
    x = torch.randn(4, 32, 28, 28, dtype=torch.bfloat16).to(memory_format=torch.channels_last)  # (B, C, H, W)
    narrow, wide = process.model.out_norm, process.model.bottleneck.res1.norm  # 4 and 16 channels a group
    with torch.no_grad():
        assert narrow.takes_route(x) and not narrow.takes_route(x.contiguous()) and not narrow.takes_route(x.float())
        assert not wide.takes_route(torch.randn(4, 128, 7, 7, dtype=torch.bfloat16).to(
            memory_format=torch.channels_last))
    assert not narrow.takes_route(x)  # autograd on: the gradients would differ in the last bit
    routed = process.sample(8, sampler="ddim", steps=5, seed=1)
    monkeypatch.setattr(GroupNorm, "route", False)
    assert torch.equal(routed, process.sample(8, sampler="ddim", steps=5, seed=1))


def test_compile_falls_back_and_says_why(monkeypatch):
    monkeypatch.setenv("PATH", "")  # no C++ compiler, so inductor cannot build CPU kernels
    with pytest.warns(RuntimeWarning, match="fell back to eager execution: no C\\+\\+ compiler"):
        plain, fast = pair(compile=True)
    assert fast.net.compiled is None
    assert torch.equal(eps_of(fast), eps_of(plain))
    assert fast.train_step(BATCH) == plain.train_step(BATCH)


def test_compiled_forward_matches_eager():
    plain, fast = pair(compile=True)
    assert fast.net.compiled is not None
    torch.testing.assert_close(eps_of(fast), eps_of(plain), rtol=1e-4, atol=1e-4)
    assert fast.net.compiled is not None, "compilation fell back to eager"


def test_cuda_graph_option_refused_on_cpu():
    process = DiffusionProcess(device="cpu", noise_steps=20)
    with pytest.raises(ValueError, match="cuda_graph=True: valid only on a CUDA device"):
        process.sample(2, cuda_graph=True)
    with pytest.raises(ValueError, match="cuda_graph=True: valid only on a CUDA device"):
        process.train_step(BATCH, cuda_graph=True)
    assert process.step == 0  # refused before any work


@cuda
def test_cuda_fp16_autocast_within_fp16_tolerance():
    plain, fast = pair("cuda", amp=True, channels_last=True)
    assert fast.amp_dtype == torch.float16 and fast.scaler.is_enabled()
    torch.testing.assert_close(eps_of(fast), eps_of(plain), rtol=0.02, atol=0.02)
    losses = [fast.train_step(BATCH) for _ in range(3)]
    assert all(torch.isfinite(torch.tensor(losses)))


@cuda
@pytest.mark.parametrize("sampler", ["ancestral", "ddim"])
def test_cuda_graph_sampling_is_bitwise_equal_to_eager(sampler):
    process = DiffusionProcess(device="cuda", noise_steps=50, amp=True, seed=0)
    process.train_step(BATCH)
    steps = 10 if sampler == "ddim" else None  # the ancestral sampler takes all T = 50 steps
    graphed = process.sample(32, sampler=sampler, steps=steps, seed=3, batch_size=16, cuda_graph=True)
    eager = process.sample(32, sampler=sampler, steps=steps, seed=3, batch_size=16, cuda_graph=False)
    assert torch.equal(graphed, eager)


@cuda
@pytest.mark.parametrize("lr_schedule", ["constant", "cosine", "cooldown"])
def test_cuda_graph_training_is_bitwise_equal_to_eager(lr_schedule):
    """fp16 AMP with its GradScaler, fused Adam and EMA, replayed from one captured step; an annealed rate is read
    by each replay, not baked into the graph."""
    eager, graphed = (DiffusionProcess(device="cuda", seed=0, ema=True, lr_schedule=lr_schedule, train_steps=10)
                      for _ in range(2))
    shapes = [16] * 6 + [8] + [16] * 3  # a batch of another shape runs eagerly between replays
    batches = [BATCH[:n] * (1 - k / 20) for k, n in enumerate(shapes)]
    eager_losses = [eager.train_step(b, cuda_graph=False) for b in batches]
    graphed_losses = [graphed.train_step(b) for b in batches]
    assert graphed._train_graph is not None and eager._train_graph is None
    assert graphed_losses == eager_losses
    for a, b in ((eager.model, graphed.model), (eager.ema_model, graphed.ema_model)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert eager.scaler.get_scale() == graphed.scaler.get_scale()
    assert torch.equal(eager.sample(8, sampler="ddim", steps=5, seed=1),
                       graphed.sample(8, sampler="ddim", steps=5, seed=1))


@cuda
def test_cuda_compile_matches_eager():
    plain, fast = pair("cuda", compile=True)
    # fp32 convolutions on CUDA run in TF32 by default (10-bit mantissa, 1e-3 relative), and
    # inductor's kernels round in another order: seen 1e-3 at most on outputs of scale 0.25.
    torch.testing.assert_close(eps_of(fast), eps_of(plain), rtol=5e-3, atol=5e-3)
    assert fast.net.compiled is not None, "compilation fell back to eager"


CUDA_RUN = r"""
import hashlib, torch
from core.diffusion import DiffusionProcess
from core.fastpath import GroupNorm
p = DiffusionProcess(device="cuda", seed=0)  # defaults: fp16 AMP, channels_last
x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
losses = [p.train_step(x) for _ in range(5)]
weights = b"".join(w.detach().cpu().numpy().tobytes() for w in p.model.parameters())
samples = p.sample(64, sampler="ddim", steps=10).cpu().numpy().tobytes()
print(repr(losses), hashlib.sha256(weights).hexdigest(), hashlib.sha256(samples).hexdigest())
"""


@cuda
def test_cuda_runs_are_deterministic_across_processes():
    runs = [subprocess.run([sys.executable, "-c", CUDA_RUN], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0].split()) >= 3
