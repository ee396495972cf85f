"""Several seeds of one config trained as one network: their weights stacked, one mapped step.

At batch 128 a training step of the seed's U-Net is hundreds of small kernels, and a GPU runs
them mostly idle. :class:`FusedTraining` stacks the weights of K members
(``torch.func.stack_module_state``) and maps the network over them (``torch.func.vmap``): the
K steps run as one step of the same kernels, each K times larger (a convolution becomes a
grouped one).

Each member keeps what makes it its solo run, so that it equals that run up to float rounding:
- its initial weights, built by its own :class:`core.diffusion.DiffusionProcess` from its seed;
- its batches (:func:`core.data.iterate_batches` with its seed) and its draws of t and noise
  (its process's training generator, in the solo order);
- its Adam moments and step count, its EMA, and under fp16 its loss scale: a member whose
  gradients overflow skips its step alone, as its own GradScaler would make it.
What differs is the kernels, and so the last bits of every step; from there the members drift
from their solo twins as any two float orderings of one training do (``tests/test_fused.py``
bounds the difference after a few steps). A fused group repeats itself bit for bit.

Members may also differ in ``schedule``: the schedule only sets the coefficient tables that noise each
member's batch (Eq. 4 of Ho et al. 2020, computed member by member, outside the mapped network), so a
``schedule=linear`` cell trains in the same group as its cosine baseline.

Not fused: dropout, whose masks come from torch's global generator and would be drawn in another
order under vmap (a member would not be its solo run even approximately), and torch.compile.
After :meth:`FusedTraining.write_back` each member's process holds its weights, EMA, optimiser,
scaler and step, so sampling, evaluation and checkpoints go through the process as for a solo run.
"""
from __future__ import annotations

import copy
import time
import warnings

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from core import ddpm
from core.config import Config
from core.data import iterate_batches
from core.diffusion import GRAPH_WARMUP_STEPS, DiffusionProcess, make_ema
from core.fastpath import GraphedAfterWarmup
from core.schedules import learning_rate
from core.train import StepBoundarySignals

# The weights' gradients are views of one (K, P) buffer, which autograd adds into in place; a view of a row
# is not dense, and autograd warns (once, "not an error") that such a gradient "may impair performance".
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")

# What members of one group may differ in: the rest of their configs is the same network and optimiser.
MEMBER_FIELDS = ("seed", "schedule")

# What a process's GradScaler starts from and how it moves (torch.amp.GradScaler's defaults).
GROWTH_FACTOR, BACKOFF_FACTOR, GROWTH_INTERVAL = 2.0, 0.5, 2000


def unfusable_reason(config: Config) -> str | None:
    """Why runs of ``config`` cannot train as one network, naming the value and the valid one; None if they can."""
    if config.dropout > 0:
        return (f"invalid dropout={config.dropout} for fused training: valid is 0.0 (dropout masks come from "
                "torch's global generator, which vmap would draw in another order)")
    if config.compile:
        return ("invalid compile=True for fused training: valid is False (fused steps run eagerly, replayed as "
                "CUDA graphs on CUDA)")
    return None


def check_fusable(processes: list[DiffusionProcess]) -> None:
    """Refuse, naming the value, a group that cannot train as one network."""
    if not processes:
        raise ValueError("invalid processes=[]: fusing needs at least one DiffusionProcess")
    first = processes[0]
    base = {k: v for k, v in first.config.to_dict().items() if k not in MEMBER_FIELDS}
    for p in processes[1:]:
        other = {k: v for k, v in p.config.to_dict().items() if k not in MEMBER_FIELDS}
        diff = {k: (base[k], other[k]) for k in base if base[k] != other[k]}
        if diff:
            raise ValueError(f"invalid group: fused members may differ only in {' and '.join(MEMBER_FIELDS)}, "
                             f"these differ: {diff}")
        if (p.device, p.precision, p.step) != (first.device, first.precision, first.step):
            raise ValueError("invalid group: members must share device, precision and step, found "
                             f"{(str(first.device), first.precision, first.step)} and "
                             f"{(str(p.device), p.precision, p.step)}")
    members = [(p.config.seed, p.config.schedule) for p in processes]
    if len(set(members)) != len(members):
        raise ValueError(f"invalid members (seed, schedule)={members}: fused members need to be distinct")
    if reason := unfusable_reason(first.config):
        raise ValueError(reason)


def _member_view(x: torch.Tensor, k: int) -> torch.Tensor:
    """A (K,) per-member value shaped to broadcast over a stacked (K, ...) weight of ``k`` dims."""
    return x.view(-1, *([1] * (k - 1)))


class StackedAdam:
    """Adam (Kingma & Ba 2015, Algorithm 1) on stacked weights, with a step count per member.

    torch's Adam keeps one step count per tensor, and a stacked tensor holds K members, which
    under fp16 may skip different steps; here a member whose ``ok`` is False keeps its weights,
    moments and count. The arithmetic is torch's single-tensor Adam's, member by member.
    """

    def __init__(self, params: list[torch.Tensor], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps = params, betas, eps
        # a tensor, which a captured step reads at each replay, so that the rate may follow a schedule
        self.lr = torch.tensor(lr, dtype=torch.float64, device=params[0].device)
        self.exp_avg = [torch.zeros_like(p) for p in params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in params]
        k = params[0].shape[0]
        self.steps = torch.zeros(k, dtype=torch.float64, device=params[0].device)  # (K,)

    @torch.no_grad()
    def step(self, ok: torch.Tensor, grads: list[torch.Tensor]) -> None:
        """One update of every member whose ``ok`` (K,) is True, from ``grads`` (one per weight)."""
        beta1, beta2 = self.betas
        self.steps += ok
        # bias corrections 1 - beta^t, per member (Algorithm 1's m-hat and v-hat)
        correction1 = 1 - beta1 ** self.steps  # (K,)
        correction2_sqrt = (1 - beta2 ** self.steps).sqrt()  # (K,)
        for p, grad, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq, strict=True):
            keep = _member_view(ok, p.dim())
            g = torch.where(keep, grad, 0.0)  # a skipped member's grad may be inf or nan
            new_m = m.lerp(g, 1 - beta1)
            new_v = torch.addcmul(v * beta2, g, g, value=1 - beta2)
            step_size = _member_view((self.lr / correction1).float(), p.dim())
            denom = new_v.sqrt() / _member_view(correction2_sqrt.float(), p.dim()) + self.eps
            p.copy_(torch.where(keep, p - step_size * (new_m / denom), p))
            m.copy_(torch.where(keep, new_m, m))
            v.copy_(torch.where(keep, new_v, v))


class StackedGradScaler:
    """Dynamic loss scaling with one scale per member (torch.amp.GradScaler's rule, member by member).

    Disabled (outside fp16) every scale is 1 and every member steps.
    """

    def __init__(self, k: int, device: torch.device, enabled: bool, init_scale: float = 2.0 ** 16):
        self.enabled = enabled
        self.scale = torch.full((k,), init_scale if enabled else 1.0, device=device)  # (K,)
        self.growth_tracker = torch.zeros(k, dtype=torch.int32, device=device)  # (K,)

    def unscale(self, grads: list[torch.Tensor]) -> torch.Tensor:
        """Divide each member's (K, ...) gradients by its scale; return which members' are all finite, (K,)."""
        ok = torch.ones_like(self.scale, dtype=torch.bool)
        if not self.enabled:
            return ok
        inverse = self.scale.double().reciprocal().float()  # (K,), as GradScaler computes it
        with torch.no_grad():
            for grad in grads:
                grad.mul_(_member_view(inverse, grad.dim()))
                ok &= grad.isfinite().flatten(1).all(dim=1)
        return ok

    def update(self, ok: torch.Tensor) -> None:
        """Back off after an overflow; grow after GROWTH_INTERVAL clean steps in a row."""
        if not self.enabled:
            return
        tracker = torch.where(ok, self.growth_tracker + 1, 0)
        grow = tracker == GROWTH_INTERVAL
        self.scale.copy_(torch.where(ok, torch.where(grow, self.scale * GROWTH_FACTOR, self.scale),
                                     self.scale * BACKOFF_FACTOR))
        self.growth_tracker.copy_(torch.where(grow, 0, tracker))


class FusedTraining:
    """K :class:`DiffusionProcess` members that differ only in seed and schedule, trained as one stacked network.

    :param processes: the members, all at the same step (fresh, or restored from checkpoints).
        Their state is read in here and written back by :meth:`write_back`.
    """

    def __init__(self, processes: list[DiffusionProcess]):
        check_fusable(processes)
        self.processes = processes
        first = processes[0]
        self.config, self.device, self.step = first.config, first.device, first.step
        self.autocast = first.autocast
        self.template = copy.deepcopy(first.model).to("meta")  # the architecture, without weights
        stacked, _ = stack_module_state([p.model for p in processes])  # name -> (K, ...) weight
        self.names = list(stacked)
        # Every weight of a member in one row: the optimiser and the loss scaling then run a few kernels
        # over (K, P) instead of a dozen for each of the ~100 weights (P, the parameters of one member).
        self.flat = torch.cat([stacked[n].flatten(1) for n in self.names], dim=1).detach()  # (K, P)
        self.flat_grad = torch.zeros_like(self.flat)  # (K, P); backward adds into it in place
        self.weights = nn.ParameterList([nn.Parameter(w) for w in self.named(self.flat)])  # views of flat
        for weight, grad in zip(self.weights, self.named(self.flat_grad), strict=True):
            weight.grad = grad
        self.adam = StackedAdam([self.flat], lr=self.config.lr)
        self.scaler = StackedGradScaler(len(processes), self.device, enabled=first.scaler.is_enabled())
        self.ema = make_ema(self.weights, self.config.ema_decay) if self.config.ema else None
        self._read_states()
        self.cuda_graphs = self.device.type == "cuda"  # as DiffusionProcess.cuda_graphs: False runs eagerly
        self._train_step = GraphedAfterWarmup(self._optimize, GRAPH_WARMUP_STEPS)

    def named(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """The (K, ...) views of a (K, P) tensor laid out as :attr:`flat`, one for each of :attr:`names`."""
        shapes = [p.shape for p in self.processes[0].model.parameters()]  # in stack_module_state's order
        sizes = [shape.numel() for shape in shapes]
        return [part.view(-1, *shape) for part, shape in zip(flat.split(sizes, dim=1), shapes, strict=True)]

    # ---- the members' state, in and out -------------------------------------------------------

    def _read_states(self) -> None:
        """Take each member's Adam moments, step count, loss scale and EMA (a resumed member has them)."""
        for i, p in enumerate(self.processes):
            params = dict(p.model.named_parameters())
            exp_avg, exp_avg_sq = self.named(self.adam.exp_avg[0]), self.named(self.adam.exp_avg_sq[0])
            for j, name in enumerate(self.names):
                state = p.optimizer.state.get(params[name], {})
                if state:
                    exp_avg[j][i].copy_(state["exp_avg"])
                    exp_avg_sq[j][i].copy_(state["exp_avg_sq"])
                    self.adam.steps[i] = float(state["step"])
            if self.scaler.enabled:
                self.scaler.scale[i] = p.scaler.get_scale()
                self.scaler.growth_tracker[i] = p.scaler.state_dict()["_growth_tracker"]
            if self.ema is not None:
                ema_params = dict(p.ema_model.module.named_parameters())
                with torch.no_grad():
                    for j, name in enumerate(self.names):
                        self.ema.module[j][i].copy_(ema_params[name])
                self.ema.n_averaged.copy_(p.ema_model.n_averaged)

    @torch.no_grad()
    def write_back(self) -> None:
        """Put each member's weights, EMA, Adam state, loss scale and step into its process."""
        for i, p in enumerate(self.processes):
            params = dict(p.model.named_parameters())
            ema_params = dict(p.ema_model.module.named_parameters()) if self.ema is not None else {}
            exp_avg, exp_avg_sq = self.named(self.adam.exp_avg[0]), self.named(self.adam.exp_avg_sq[0])
            for j, name in enumerate(self.names):
                param = params[name]
                param.copy_(self.weights[j][i])
                step_device = param.device if self.device.type == "cuda" else "cpu"  # where torch's Adam keeps it
                p.optimizer.state[param] = {  # in the weight's own memory layout (channels_last), as Adam makes it
                    "step": torch.tensor(float(self.adam.steps[i]), dtype=torch.float32, device=step_device),
                    "exp_avg": torch.empty_like(param).copy_(exp_avg[j][i]),
                    "exp_avg_sq": torch.empty_like(param).copy_(exp_avg_sq[j][i])}
                if self.ema is not None:
                    ema_params[name].copy_(self.ema.module[j][i])
            if self.ema is not None:
                p.ema_model.n_averaged.copy_(self.ema.n_averaged)
            if self.scaler.enabled:
                p.scaler.load_state_dict({**p.scaler.state_dict(), "scale": float(self.scaler.scale[i]),
                                          "_growth_tracker": int(self.scaler.growth_tracker[i])})
            p.step = self.step
            p.forget_train_graph()  # a captured solo step holds the old state

    # ---- training -----------------------------------------------------------------------------

    def _network(self, weights: dict[str, torch.Tensor], x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, weights, (x, t))

    def losses(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Each member's L_simple (Ho et al. 2020, Eq. 14): (K, B, C, H, W) batches in, (K,) out."""
        # Eq. 4, each member with its own schedule's coefficients: (K, B, C, H, W)
        x_t = torch.stack([ddpm.q_sample(p.coeffs, x0[i], t[i], noise[i]) for i, p in enumerate(self.processes)])
        weights = dict(zip(self.names, self.weights, strict=True))
        with self.autocast():
            predicted = vmap(self._network)(weights, x_t, t)  # (K, B, C, H, W)
        return (predicted.float() - noise).square().mean(dim=(1, 2, 3, 4))

    def _optimize(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Losses, gradients and one Adam step per member: what a CUDA graph replays."""
        self.flat_grad.zero_()
        losses = self.losses(x0, t, noise)  # (K,)
        (losses * self.scaler.scale).sum().backward()  # member i's gradient, times its own scale
        ok = self.scaler.unscale([self.flat_grad])
        self.adam.step(ok, [self.flat_grad])
        self.scaler.update(ok)
        return losses.detach()

    def draw(self, batches: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each member's batch and its t and noise from its own generator, stacked: (K, B, ...)."""
        batches = [x.to(self.device, non_blocking=True) for x in batches]
        draws = [p.draw_noise(x) for p, x in zip(self.processes, batches, strict=True)]
        return torch.stack(batches), torch.stack([t for t, _ in draws]), torch.stack([n for _, n in draws])

    def train_step_async(self, batches: list[torch.Tensor]) -> torch.Tensor:
        """One step of every member on its own (B, C, H, W) batch; the (K,) losses before the step.

        As for a solo process on CUDA, the first steps run eagerly on a side stream and a later
        one is captured as a CUDA graph; the draws are made outside it, in the solo order.
        """
        x0, t, noise = self.draw(batches)
        c = self.config
        if c.lr_schedule != "constant":  # a constant rate stays the one StackedAdam was built with
            self.adam.lr.fill_(learning_rate(c.lr, c.lr_schedule, self.step, c.train_steps))
        losses = self._train_step(x0, t, noise, use_graph=self.cuda_graphs)
        if self.ema is not None:
            self.ema.update_parameters(self.weights)
        self.step += 1
        return losses


def train_fused(fused: FusedTraining, images: torch.Tensor, log=None, windows: list[list[float]] | None = None) -> None:
    """Train every member up to ``config.train_steps``, then write their state back.

    Ctrl-C or SIGTERM stops it between two whole steps (:class:`core.train.StepBoundarySignals`): the
    members' state is written back as it stands, their losses since the last logged point are left in
    ``windows``, and the signal's exception is raised, for the caller to checkpoint the members.

    :param images: (N, C, H, W) training images in [-1, 1]; each member draws its own batches.
    :param log: ``log(i, name, value, step)`` for member i, with the names and cadence of
        :func:`core.train.train`: the mean loss since the last point, and the images a second of one member.
    :param windows: member i's losses since its last logged point, one list per member: empty for a fresh
        group, a stopped group's to resume it exactly. When it ends, finished or stopped, they hold those
        of the step it ended at.
    """
    c = fused.config
    if fused.device.type == "cuda":
        images = images.to(fused.device)
    streams = [iterate_batches(images, c.batch_size, p.config.seed, start=fused.step) for p in fused.processes]
    # (K,) losses of each step not yet logged; a resumed group's window first, in float32 as they were computed
    pending = [torch.tensor(step, device=fused.device) for step in zip(*windows or [])]
    started = time.perf_counter()
    try:
        with StepBoundarySignals() as signals:
            while fused.step < c.train_steps:
                pending.append(fused.train_step_async([next(s) for s in streams]))
                if fused.step % c.log_every == 0 or fused.step == c.train_steps:
                    means = torch.stack(pending).mean(dim=0).tolist()  # one read-back per logged point
                    images_per_s = len(pending) * c.batch_size / (time.perf_counter() - started)
                    for i, value in enumerate(means if log is not None else []):
                        log(i, "train.loss", value, fused.step)
                        log(i, "train.images_per_s", images_per_s, fused.step)
                    pending.clear()
                    started = time.perf_counter()
                signals.check()  # a held Ctrl-C or SIGTERM is raised here, between two whole steps
    finally:  # finished, or stopped (or failed) with every member at the same whole step
        fused.write_back()
        if windows is not None:  # (steps, K) read back, one column per member
            by_member = list(zip(*torch.stack(pending).tolist())) if pending else [() for _ in fused.processes]
            for window, losses in zip(windows, by_member, strict=True):
                window[:] = losses
