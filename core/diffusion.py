"""DiffusionProcess: the seed's trainer and sampler around :class:`core.model.DiffusionModel`.

Training minimises L_simple, the MSE between the true and the predicted noise (Ho et al. 2020,
Eq. 14), with Adam. AMP is fp16 + GradScaler on CUDA and bfloat16 autocast on a CPU that runs it
faster than fp32 (one with AMX; elsewhere fp32, see :mod:`core.precision`). EMA uses
``torch.optim.swa_utils.AveragedModel``. Sampling is the ancestral DDPM loop (Algorithm 2) by
default, or DDIM (Song et al. 2021) for fast evaluation. Every random draw comes from a seeded
generator held by the process, and :meth:`state_dict` captures them all, so training resumes exactly.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from core import ddpm
from core.config import SAMPLERS, Config, Sampler, choices, config_or_fields
from core.fastpath import CompiledModule, CudaGraphed, GraphedAfterWarmup, to_channels_last
from core.model import DiffusionModel
from core.precision import DTYPES, resolve_precision
from core.schedules import get_betas, learning_rate
from core.seeding import make_generator, rng_state, seed_everything, set_rng_state

SAMPLE_SEED_OFFSET = 1_000_003  # keeps the sampling stream apart from the training stream
GRAPH_WARMUP_STEPS = 3  # eager training steps, on a side stream, before a training step is captured


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``None`` or "auto" -> CUDA when present, else the CPU; "cuda" without a GPU is an error."""
    name = "auto" if device is None else str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ValueError(f"invalid device={name!r}: valid values are {' or '.join(map(repr, choices('device')))}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("invalid device='cuda': no CUDA device is present here; valid values are 'auto' or 'cpu'")
    return dev


def ema_decay_at(n: int, decay: float) -> float:
    """EMA decay with warm-up, min(decay, (1 + n) / (10 + n)), n = updates already averaged.

    Without a warm-up a 0.999 EMA over a short budget still carries most of the untrained
    initial weights (0.999^800 = 45% after 800 steps), and the EMA toggle would measure that
    rather than averaging; the same rule is used at every scale.
    """
    return min(decay, (1 + n) / (10 + n))


def make_ema(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An AveragedModel whose update is p_ema <- d * p_ema + (1 - d) * p, with d from :func:`ema_decay_at`."""
    def multi_avg_fn(ema_params, model_params, num_averaged):
        weight = 1.0 - ema_decay_at(int(num_averaged), decay)
        torch._foreach_lerp_(ema_params, model_params, weight)  # ema + w * (p - ema)

    return AveragedModel(model, multi_avg_fn=multi_avg_fn, use_buffers=True)


class DiffusionProcess:
    """The DDPM process of the seed: model, schedule, optimiser, AMP, EMA and samplers.

    ``DiffusionProcess(config)``, nanoGPT-style, or the seed's keyword front door
    ``DiffusionProcess(image_size=28, channels=1, hidden_dims=[32, 64, 128], noise_steps=1000,
    device=torch.device("cuda"))``, whose keywords are fields of :class:`core.config.Config`.
    Constructing one calls :func:`core.seeding.seed_everything` with ``config.seed``, so the same
    config gives the same initial weights and the same training and sampling draws.

    :param config: the whole configuration; kept as given in :attr:`config` (``device`` may stay "auto").
    :param device: where to run, overriding ``config.device``: a torch device, "cpu", "cuda" or
        "auto"/None (CUDA when present). The resolved device is :attr:`device`, beside the config.
    :param precision: what ``config.amp`` computes in: "auto" (fp16 on CUDA; bf16 on a CPU with AMX,
        else fp32) or a precision to force ("fp32", "bf16", "fp16"). The result is :attr:`precision`.
    :param fields: without ``config``, the Config fields to build it from (the seed's keywords).
    """

    def __init__(self, config: Config | None = None, /, device: torch.device | str | None = None,
                 precision: str = "auto", **fields):
        self.device = resolve_device(device if device is not None else getattr(config, "device", None))
        if config is None and device not in (None, "auto"):
            fields["device"] = self.device.type  # the seed's device=torch.device(...) is a requested device
        self.config = config_or_fields(config, fields, "DiffusionProcess")
        self.precision = resolve_precision(self.config.amp, self.device, precision)
        self._build()

    def _build(self) -> None:
        c = self.config
        seed_everything(c.seed)
        self.model = DiffusionModel(c)
        self.model.to(self.device)
        if c.channels_last:
            to_channels_last(self.model)
        self.coeffs = ddpm.DDPMCoefficients.from_betas(get_betas(c.schedule, c.noise_steps), self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr, **self._adam_options())
        if self.device.type == "cuda":  # eager steps of a capturable Adam make torch warn that it
            # "can impair performance"; the fused kernel ignores the flag (torch.optim.adam._fused_adam).
            self.optimizer._warned_capturable_if_run_uncaptured = True
        self.ema_model = make_ema(self.model, c.ema_decay) if c.ema else None
        # The callables that run the networks: the modules themselves, or their compiled forms.
        self.net = self._fast(self.model)
        self.ema_net = self._fast(self.ema_model.module) if self.ema_model is not None else None
        cuda = self.device.type == "cuda"
        # fp16 needs the GradScaler; bf16 has fp32's exponent range and needs no scaling.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.amp_dtype = DTYPES[self.precision]  # the autocast dtype; float32 means no autocast
        self.train_generator = make_generator(c.seed, self.device)
        self.sample_generator = make_generator(c.seed + SAMPLE_SEED_OFFSET, self.device)
        self.step = 0
        # Replay training and sampler steps as CUDA graphs (core/fastpath.py); with compile=True the
        # graphs capture inductor's kernels.
        self.cuda_graphs = cuda
        self.forget_train_graph()

    def forget_train_graph(self) -> None:
        """Start the training step's warm-up and capture anew (a captured step holds the optimiser's state)."""
        self._train_step = GraphedAfterWarmup(self._optimize, GRAPH_WARMUP_STEPS)

    @property
    def _train_graph(self) -> CudaGraphed | None:
        """The captured training step, once there is one."""
        return self._train_step.graph

    def _adam_options(self) -> dict:
        """On CUDA, one fused Adam kernel that reads the GradScaler's state on the device: no host
        sync per step, and capturable in a CUDA graph. The CPU keeps torch's default Adam."""
        return dict(fused=True, capturable=True) if self.device.type == "cuda" else {}

    def _fast(self, module: torch.nn.Module):
        return CompiledModule(module, self.device) if self.config.compile else module

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.config.channels_last else x

    # ---- training ----------------------------------------------------------------------------

    def autocast(self):
        """The AMP context of this process (a no-op in fp32: ``amp`` off, or no faster precision here)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        # CUDA-graph capture forbids autocast's weight cache; each weight is cast once per call anyway.
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=self.device.type != "cuda")

    def draw_noise(self, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """t ~ U{0..T-1} and eps ~ N(0, I) for a batch x0, from the training generator (Ho et al. 2020, Alg. 1)."""
        g = self.train_generator
        t = torch.randint(0, self.config.noise_steps, (x0.shape[0],), generator=g, device=self.device)  # (B,)
        noise = torch.randn(x0.shape, generator=g, device=self.device)  # (B, C, H, W)
        return t, noise

    def noise_loss(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """|| eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2 (Ho et al. 2020, Eq. 14)."""
        x_t = ddpm.q_sample(self.coeffs, x0, t, noise)
        with self.autocast():
            predicted = self.net(self._layout(x_t), t)
        return F.mse_loss(predicted.float(), noise)

    def loss(self, x0: torch.Tensor) -> torch.Tensor:
        """L_simple (Ho et al. 2020, Eq. 14) on a batch x0 of shape (B, C, H, W) in [-1, 1]."""
        return self.noise_loss(x0, *self.draw_noise(x0))

    def _optimize(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The loss, its gradient and one Adam step: the part of a training step a CUDA graph replays."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.noise_loss(x0, t, noise)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def _set_rate(self, rate: float) -> None:
        """Set Adam's rate for the next update. On CUDA it lives in a tensor, which a captured step reads
        at each replay (a Python number would be baked into the graph)."""
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(rate)
            else:
                group["lr"] = torch.tensor(rate, device=self.device) if self.device.type == "cuda" else rate

    def train_step(self, batch, cuda_graph: bool | None = None) -> float:
        """One Adam step on a batch: a (B, C, H, W) tensor or a torchvision ``(images, labels)`` pair.

        :param cuda_graph: replay the step as a CUDA graph (default :attr:`cuda_graphs`: on CUDA);
            see :meth:`train_step_async`.
        :return: the batch's loss before the step.
        """
        return self.train_step_async(batch, cuda_graph).item()

    def train_step_async(self, batch, cuda_graph: bool | None = None) -> torch.Tensor:
        """:meth:`train_step`, returning the loss as a 0-d tensor without waiting for the device.

        On CUDA the first :data:`GRAPH_WARMUP_STEPS` steps run eagerly on a side stream; the next
        one is captured as a CUDA graph and every later step of the same batch shape replays it.
        The noise is drawn outside the graph, from the same generator in the same order, and the
        replay runs the captured kernels, so the weights equal those of eager training.
        """
        x0 = batch[0] if isinstance(batch, (list, tuple)) else batch
        x0 = x0.to(self.device, non_blocking=True)
        use_graph = self.cuda_graphs if cuda_graph is None else cuda_graph
        if use_graph and self.device.type != "cuda":
            raise ValueError("invalid cuda_graph=True: valid only on a CUDA device (this process runs on the CPU)")
        self.model.train()
        t, noise = self.draw_noise(x0)
        if self.config.lr_schedule != "constant":
            self._set_rate(learning_rate(self.config.lr, self.config.lr_schedule, self.step, self.config.train_steps))
        loss = self._train_step(x0, t, noise, use_graph=use_graph)
        if self.ema_model is not None:
            self.ema_model.update_parameters(self.model)
        self.step += 1
        return loss

    # ---- sampling ----------------------------------------------------------------------------

    @property
    def sampling_model(self) -> DiffusionModel:
        """The EMA weights when ``ema`` is on, else the trained weights."""
        return self.ema_model.module if self.ema_model is not None else self.model

    def _denoiser(self):
        """eps(x_t, t) of the sampling weights, in fp32, through this process's fast paths."""
        net = self.ema_net if self.ema_net is not None else self.net

        def eps(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return net(self._layout(x_t), t).float()
        return eps

    def _ancestral(self, eps_fn, x, g, clip_denoised: bool, progress: bool) -> torch.Tensor:
        for step in tqdm(reversed(range(self.config.noise_steps)), total=self.config.noise_steps,
                         disable=not progress, desc="ancestral", leave=False):
            # 1. predict the noise at t
            t = torch.full((x.shape[0],), step, device=self.device, dtype=torch.long)
            eps = eps_fn(x, t)
            # 2. draw z ~ N(0, I) for every step, so the stream is the same whatever the clipping
            z = torch.randn(x.shape, generator=g, device=self.device)
            # 3. x_{t-1} = mu_theta(x_t, t) + sigma_t z  (Ho et al. 2020, Algorithm 2)
            x = ddpm.ancestral_step(self.coeffs, x, t, eps, z, self.config.variance, clip_denoised)
        return x

    def _ddim(self, eps_fn, x, g, steps: int, eta: float, clip_denoised: bool, progress: bool) -> torch.Tensor:
        ts = ddpm.ddim_timesteps(self.config.noise_steps, steps)
        for i, step in enumerate(tqdm(ts, disable=not progress, desc="ddim", leave=False)):
            # 1. predict the noise at t
            t = torch.full((x.shape[0],), step, device=self.device, dtype=torch.long)
            eps = eps_fn(x, t)
            # 2. draw z only when the step is stochastic (eta > 0)
            z = torch.randn(x.shape, generator=g, device=self.device) if eta > 0 else None
            # 3. move to the next strided timestep (Song et al. 2021, Eq. 12)
            t_prev = ts[i + 1] if i + 1 < len(ts) else -1
            x = ddpm.ddim_step(self.coeffs, x, step, t_prev, eps, z, eta, clip_denoised)
        return x

    def sample_as_configured(self, num_samples: int, seed: int, clip_denoised: bool | None = None) -> torch.Tensor:
        """:meth:`sample` with this process's config's sampler, DDIM steps and eta: how runs draw their samples."""
        c = self.config
        return self.sample(num_samples, sampler=c.sampler, steps=c.sampler_steps, eta=c.sampler_eta,
                           clip_denoised=clip_denoised, seed=seed)

    @torch.inference_mode()
    def sample(self, num_samples: int = 16, *, sampler: Sampler = "ancestral", steps: int | None = None,
               eta: float = 0.0, clip_denoised: bool | None = None, seed: int | None = None,
               batch_size: int | None = None, cuda_graph: bool | None = None,
               progress: bool = False) -> torch.Tensor:
        """Generate ``num_samples`` images in [-1, 1], shape (N, C, H, W), on this process's device.

        :param sampler: "ancestral" (the seed's 1000-step DDPM) or "ddim" (Song et al. 2021).
        :param steps: DDIM steps (default 50); the ancestral sampler always takes all T steps.
        :param eta: DDIM stochasticity; 0 is deterministic given x_T.
        :param clip_denoised: clip the predicted x_0 to [-1, 1] inside each step. Default: off for
            the ancestral sampler (the seed's formula), on for DDIM.
        :param seed: seed a fresh generator for this call; by default the process's own sampling
            generator continues. Both samplers draw x_T first from the same generator.
        :param batch_size: images denoised at once (default 256 on the CPU, 2500 on CUDA); the
            draws are taken batch after batch, so the batch size is part of what fixes the samples.
        :param cuda_graph: replay each step's network call as a CUDA graph (default
            :attr:`cuda_graphs`). It changes launch overhead, not the kernels or the draws.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"invalid sampler={sampler!r}: valid values are {' or '.join(map(repr, SAMPLERS))}")
        if sampler == "ancestral" and steps not in (None, self.config.noise_steps):
            raise ValueError(f"invalid steps={steps} for sampler='ancestral': it takes all "
                             f"{self.config.noise_steps} steps; use sampler='ddim' for fewer")
        cuda = self.device.type == "cuda"
        if cuda_graph and not cuda:
            raise ValueError("invalid cuda_graph=True: valid only on a CUDA device (this process runs on the CPU)")
        use_graph = self.cuda_graphs if cuda_graph is None else cuda_graph
        batch_size = batch_size or (2500 if cuda else 256)
        g = make_generator(seed, self.device) if seed is not None else self.sample_generator
        clip = (sampler == "ddim") if clip_denoised is None else clip_denoised
        model = self.sampling_model
        was_training = model.training
        model.eval()
        c = self.config
        eps_fn, graphed, out = self._denoiser(), None, []
        for start in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - start)
            x = torch.randn((n, c.channels, c.image_size, c.image_size), generator=g, device=self.device)  # x_T
            if use_graph and graphed is None:
                graphed = CudaGraphed(eps_fn, (x, torch.zeros(n, dtype=torch.long, device=self.device)))
            step_fn = graphed if graphed is not None and graphed.static_inputs[0].shape == x.shape else eps_fn
            if sampler == "ancestral":
                x = self._ancestral(step_fn, x, g, clip, progress)
            else:
                x = self._ddim(step_fn, x, g, steps or 50, eta, clip, progress)
            out.append(x.clamp(-1.0, 1.0))
        model.train(was_training)
        return torch.cat(out)

    # ---- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything needed to resume exactly: weights, EMA, optimiser, scaler, every RNG, step, config."""
        return {
            "config": self.config.to_dict(),
            "precision": self.precision,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": self.ema_model.state_dict() if self.ema_model is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_generator": self.train_generator.get_state(),
            "sample_generator": self.sample_generator.get_state(),
            "global_rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; the stored config must equal this process's (device aside)."""
        mine = {k: v for k, v in self.config.to_dict().items() if k != "device"}
        theirs = {k: v for k, v in state["config"].items() if k != "device"}
        if mine != theirs:
            diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
            raise ValueError(f"checkpoint config differs from this process (stored, here): {diff}")
        self.model.load_state_dict(state["model"])
        if self.ema_model is not None:
            self.ema_model.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # a checkpoint from another device keeps this one's Adam
            group.update(self._adam_options())
        self.forget_train_graph()  # the graph holds the replaced optimiser state
        self.scaler.load_state_dict(state["scaler"])
        self.train_generator.set_state(state["train_generator"])
        self.sample_generator.set_state(state["sample_generator"])
        set_rng_state(state["global_rng"])
        self.step = state["step"]
