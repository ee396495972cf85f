"""The training loop: a step budget, a logging callback, periodic checkpoints and resume.

``log(name, value, step)`` is the only way out of the loop; the Sacred experiment binds it to
``_run.log_scalar``, a notebook can bind it to ``print``. ``python -m core.train`` trains one
scale and writes a PNG grid of samples.
"""
from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from core.checkpoint import save_checkpoint
from core.config import SCALES, Config
from core.data import as_tensor, iterate_batches, mnist
from core.diffusion import DiffusionProcess

LogFn = Callable[[str, float, int], None]


def train(process: DiffusionProcess, images: torch.Tensor, log: LogFn | None = None,
          checkpoint: Callable[[list[float]], None] | None = None, checkpoint_every: int = 0,
          window: list[float] | None = None, progress: bool = False) -> None:
    """Train ``process`` from its current step up to ``config.train_steps``.

    :param images: (N, C, H, W) training images in [-1, 1]; batches come from :func:`iterate_batches`
        (on CUDA the images are copied to the GPU once).
    :param log: callback receiving ``("train.loss", value, step)`` every ``log_every`` steps (the mean
        over those steps) and ``("train.images_per_s", value, step)``.
    :param checkpoint: called with the current loss window every ``checkpoint_every`` steps; the
        caller saves the process and the window, and passes the window back to resume exactly.
    :param window: losses since the last logged point (empty for a fresh run).
    """
    c = process.config
    window = [] if window is None else window
    pending: list[torch.Tensor] = []  # 0-d losses not yet read back: the device runs ahead until a log
    if process.device.type == "cuda":
        images = images.to(process.device)
    batches = iterate_batches(images, c.batch_size, c.seed, start=process.step)

    def read_back() -> None:  # the floats .item() would give, with one sync for all of them
        if pending:
            window.extend(torch.stack(pending).tolist())
            pending.clear()

    started = time.perf_counter()
    try:
        with StepBoundarySignals() as signals:
            for _ in tqdm(range(process.step, c.train_steps), initial=process.step, total=c.train_steps,
                          disable=not progress, desc="train"):
                pending.append(process.train_step_async(next(batches)))  # (B, C, H, W) batch in
                logging = process.step % c.log_every == 0 or process.step == c.train_steps
                saving = checkpoint is not None and checkpoint_every and process.step % checkpoint_every == 0
                if logging or saving:
                    read_back()
                if logging:
                    if log is not None:
                        log("train.loss", sum(window) / len(window), process.step)
                        log("train.images_per_s", len(window) * c.batch_size / (time.perf_counter() - started),
                            process.step)
                    window.clear()
                    started = time.perf_counter()
                if saving:
                    checkpoint(window)
                signals.check()  # a held Ctrl-C or SIGTERM is raised here, between two whole steps
    except BaseException:  # an interrupted caller checkpoints ``window``: it must hold every step's loss
        read_back()
        raise


class StepBoundarySignals:
    """While active, SIGINT and SIGTERM wait for :meth:`check`, called between two training steps.

    Raised where they land, they could stop an optimiser step half way (some weights updated,
    others not, the step count behind), and the checkpoint an interrupted run writes would not
    resume exactly. :meth:`check` delivers a held signal through the handler installed before
    (Ctrl-C's ``KeyboardInterrupt``, the experiment's ``Terminated``). Only the main thread can
    install handlers; elsewhere signals are left alone.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> "StepBoundarySignals":
        self.held: tuple | None = None
        self.previous = {}
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._hold) for s in self.SIGNALS}
        return self

    def _hold(self, signum, frame) -> None:
        self.held = (signum, frame)

    def check(self) -> None:
        if self.held is None:
            return
        (signum, frame), self.held = self.held, None
        handler = self.previous[signum]
        self.__exit__()
        if callable(handler):
            handler(signum, frame)
        else:  # SIG_DFL or SIG_IGN: what would have happened without us
            signal.raise_signal(signum)

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous = {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train the seed model at one scale and save a sample grid.")
    parser.add_argument("--scale", choices=sorted(SCALES), default="smoke")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"))
    args = parser.parse_args(argv)
    config = Config(**SCALES[args.scale], seed=args.seed)
    process = DiffusionProcess(config)
    train(process, as_tensor(mnist(train=True)), log=lambda n, v, s: print(f"step {s:>6}  {n} = {v:.4f}"),
          progress=False)
    samples = process.sample_as_configured(64, config.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    from torchvision.utils import save_image  # here, not at the top: see core/data.py

    save_image(samples.cpu() * 0.5 + 0.5, args.out / "samples.png", nrow=8)  # make_grid of [0, 1] images
    save_checkpoint(process, args.out / "checkpoint.pt")
    print(f"wrote {args.out / 'samples.png'} and {args.out / 'checkpoint.pt'}")


if __name__ == "__main__":
    main()
