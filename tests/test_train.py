"""The training loop: a Ctrl-C stops it between two whole steps, with every finished step's loss kept."""
import signal

import pytest
import torch

from core.diffusion import DiffusionProcess
from core.train import train

IMAGES = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 2 - 1  # (N, C, H, W)


def small_process(**options) -> DiffusionProcess:
    return DiffusionProcess(device="cpu", noise_steps=50, train_steps=12, batch_size=8, log_every=10,
                            amp=False, seed=1, **options)


@pytest.fixture
def ctrl_c_raises():
    """Ctrl-C raises KeyboardInterrupt here even when pytest was started in the background, where the
    shell hands it SIGINT ignored (Python then leaves it ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_inside_an_optimiser_step_stops_after_it_and_resumes_exactly(ctrl_c_raises):
    plain = small_process()
    train(plain, IMAGES)

    interrupted = small_process()
    calls = []

    def interrupt_third_step(optimizer, args, kwargs):  # runs inside the step, before `step += 1`
        calls.append(1)
        if len(calls) == 3:
            signal.raise_signal(signal.SIGINT)

    interrupted.optimizer.register_step_post_hook(interrupt_third_step)
    window: list[float] = []
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, IMAGES, window=window)
    assert interrupted.step == 3 and len(window) == 3  # the third step finished and its loss is kept
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored

    train(interrupted, IMAGES, window=window)  # resume in place, as from the final checkpoint
    assert all(torch.equal(a, b) for a, b in zip(plain.model.state_dict().values(),
                                                  interrupted.model.state_dict().values()))
