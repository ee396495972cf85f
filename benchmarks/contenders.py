"""The contenders of ``benchmarks/run.py``, behind one interface.

Each contender owns a model, an optimiser and seeded generators on one device and offers:
``train_step(x0)`` (one Adam step on L_simple), ``denoise_step(x, t)`` (one ancestral DDPM step)
and ``sample(n, steps)`` (end to end: ``steps=1000`` is ancestral DDPM, fewer is a 50-evaluation
fast sampler: our DDIM, diffusers' ``DDPMPipeline`` with ``num_inference_steps``).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from core import ddpm
from core.config import Config
from core.diffusion import DiffusionProcess
from core.precision import DTYPES, amp_precision

# diffusers' UNet2DModel closest to the seed model: 1,112,801 parameters against 1,242,305 (0.90x),
# the same two downsamplings (28 -> 14 -> 7), attention only at 7x7, GroupNorm with 8 groups.
DIFFUSERS_UNET = dict(
    sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8,
)


def amp_dtype(device: torch.device) -> torch.dtype:
    """The AMP precision of each device (fp16 on CUDA, bf16 on a CPU), the same for every contender; our
    default uses it only where it is the faster one (:func:`core.precision.resolve_precision`)."""
    return DTYPES[amp_precision(device)]


def sample_batch(device: torch.device) -> int:
    """Images denoised at once in end-to-end sampling, the same for every contender."""
    return 1000 if device.type == "cuda" else 250


class Ours:
    """Our DiffusionProcess with the given config fields (the defaults are our default path)."""

    def __init__(self, device: torch.device, **fields):
        self.process = DiffusionProcess(device=device, **fields)
        self.model = self.process.model
        self.precision = str(self.process.amp_dtype).removeprefix("torch.")  # what AMP resolved to here

    def train_step(self, x0: torch.Tensor, cuda_graph: bool | None = None) -> None:
        self.process.train_step(x0, cuda_graph)

    @torch.inference_mode()
    def denoise_step(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        p = self.process
        p.model.eval()
        eps = p._denoiser()(x, t)
        z = torch.randn(x.shape, generator=p.sample_generator, device=p.device)
        return ddpm.ancestral_step(p.coeffs, x, t, eps, z, p.config.variance, False)  # Ho et al. 2020, Alg. 2

    def sample(self, n: int, steps: int) -> torch.Tensor:
        sampler = "ancestral" if steps == self.process.config.noise_steps else "ddim"
        return self.process.sample(n, sampler=sampler, steps=None if sampler == "ancestral" else steps, seed=0,
                                   batch_size=sample_batch(self.process.device))


class Diffusers:
    """diffusers' UNet2DModel + DDPMScheduler (cosine, 1000 steps), trained like ours; eager NCHW."""

    def __init__(self, device: torch.device, amp: bool = False):
        from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

        torch.manual_seed(0)
        self.device, self.amp = device, amp
        self.model = UNet2DModel(**DIFFUSERS_UNET).to(device)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
        self.scheduler.set_timesteps(1000)
        self.pipeline = DDPMPipeline(unet=self.model, scheduler=self.scheduler)
        self.pipeline.set_progress_bar_config(disable=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=Config().lr)
        self.generator = torch.Generator(device).manual_seed(0)
        self.precision = str(amp_dtype(device)).removeprefix("torch.") if amp else "float32"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=amp_dtype(self.device)) if self.amp else contextlib.nullcontext()

    def train_step(self, x0: torch.Tensor) -> None:
        self.model.train()
        g = self.generator
        t = torch.randint(0, 1000, (x0.shape[0],), generator=g, device=self.device)  # (B,)
        noise = torch.randn(x0.shape, generator=g, device=self.device)  # (B, C, H, W)
        x_t = self.scheduler.add_noise(x0, noise, t)
        with self.autocast():
            predicted = self.model(x_t, t).sample
        loss = F.mse_loss(predicted.float(), noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    @torch.inference_mode()
    def denoise_step(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        with self.autocast():
            eps = self.model(x, t).sample.float()
        return self.scheduler.step(eps, int(t[0]), x, generator=self.generator).prev_sample

    @torch.inference_mode()
    def sample(self, n: int, steps: int) -> torch.Tensor:
        out = []
        batch = sample_batch(self.device)
        for start in range(0, n, batch):
            with self.autocast():
                images = self.pipeline(batch_size=min(batch, n - start), generator=self.generator,
                                       num_inference_steps=steps, output_type="np").images
            out.append(torch.from_numpy(images))
        self.scheduler.set_timesteps(1000)
        return torch.cat(out)
