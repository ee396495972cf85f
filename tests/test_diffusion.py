import re

import pytest
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import Config
from core.diffusion import DiffusionProcess, ema_decay_at
from core.schedules import learning_rate


def test_golden_five_step_training_run(tiny_process, batch):
    """Regression values of a seeded run (fp32, T = 20); a change here changes every stored result."""
    losses = [tiny_process.train_step(batch) for _ in range(5)]
    assert sum(losses) == pytest.approx(4.721159636974335, rel=1e-5)
    weight_sum = sum(p.double().sum().item() for p in tiny_process.model.parameters())
    assert weight_sum == pytest.approx(908.1743550653293, rel=1e-6)


def test_golden_short_sampling_loops(tiny_process, batch):
    for _ in range(5):
        tiny_process.train_step(batch)
    ancestral = tiny_process.sample(4, seed=7)
    assert ancestral.double().sum().item() == pytest.approx(324.027621999383, rel=1e-4)
    ddim = tiny_process.sample(4, sampler="ddim", steps=5, seed=7)
    assert ddim.double().sum().item() == pytest.approx(322.85317712277174, rel=1e-4)


def test_train_step_accepts_tensor_and_torchvision_pair(batch):
    a = DiffusionProcess(noise_steps=20, device="cpu", amp=False)
    b = DiffusionProcess(noise_steps=20, device="cpu", amp=False)
    assert a.train_step(batch) == b.train_step((batch, torch.zeros(len(batch), dtype=torch.long)))


def test_ema_update_math(batch):
    p = DiffusionProcess(noise_steps=20, device="cpu", amp=False, ema=True, ema_decay=0.9)
    expected = None
    for n in range(4):
        p.train_step(batch)
        current = [w.detach().clone() for w in p.model.parameters()]
        if expected is None:
            expected = current  # the first update copies the weights
        else:
            d = min(0.9, (1 + n) / (10 + n))  # warm-up; n updates already averaged
            expected = [d * e + (1 - d) * c for e, c in zip(expected, current)]
    for e, got in zip(expected, p.ema_model.module.parameters()):
        assert torch.allclose(got, e, atol=1e-6)
    assert ema_decay_at(10_000, 0.999) == 0.999 and ema_decay_at(0, 0.999) == 0.1


def test_sampling_uses_the_ema_weights(batch):
    p = DiffusionProcess(noise_steps=20, device="cpu", amp=False, ema=True)
    for _ in range(3):
        p.train_step(batch)
    assert p.sampling_model is p.ema_model.module
    assert not torch.equal(next(p.sampling_model.parameters()), next(p.model.parameters()))


def test_bf16_amp_path_on_cpu(batch):
    amp = DiffusionProcess(noise_steps=20, device="cpu", amp=True, precision="bf16")
    fp32 = DiffusionProcess(noise_steps=20, device="cpu", amp=False)
    assert amp.amp_dtype == torch.bfloat16 and not amp.scaler.is_enabled()
    with amp.autocast():
        out = amp.model(batch, torch.zeros(len(batch), dtype=torch.long))
    assert out.dtype == torch.bfloat16
    loss_amp, loss_fp32 = amp.train_step(batch), fp32.train_step(batch)
    assert loss_amp != loss_fp32 and loss_amp == pytest.approx(loss_fp32, rel=0.05)


def test_overfitting_one_batch_lowers_the_loss(batch):
    p = DiffusionProcess(noise_steps=1000, device="cpu", amp=False)
    losses = [p.train_step(batch) for _ in range(50)]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(schedule="cosin"), r"schedule='cosin'.*'cosine' or 'linear'"),
    (dict(dropout=1.5), r"dropout=1\.5.*\[0, 1\)"),
    (dict(hidden_dims=[32, 64]), r"hidden_dims=\[32, 64\].*three positive"),
    (dict(image_size=30), r"image_size=30.*multiple of 4"),
    (dict(noise_steps=0), r"noise_steps=0.*>= 1"),
    (dict(variance="fixed"), r"variance='fixed'.*'posterior' or 'beta'"),
    (dict(attention="yes"), r"attention='yes'.*True or False"),
    (dict(device="tpu"), r"device='tpu'"),
    (dict(sampler_eta=1.5), r"sampler_eta=1\.5.*from 0 to 1"),
    (dict(sampler="ancestral", sampler_eta=1), r"sampler_eta=1\.0.*0 with sampler='ancestral'"),
    (dict(lr_schedule="step"), r"lr_schedule='step'.*'constant' or 'cosine' or 'cooldown'"),
])
def test_bad_constructor_values_name_field_and_choices(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        DiffusionProcess(**({"device": "cpu"} | kwargs))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA device"):
        DiffusionProcess(device="cuda")


def test_one_config_travels_whole_and_the_device_sits_beside_it(batch):
    config = Config(noise_steps=20, amp=False)
    process = DiffusionProcess(config)
    assert process.config is config and config.device == "auto"  # the config asked for, unchanged
    assert process.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert process.model.hidden_dims == list(config.hidden_dims) and process.coeffs.betas.shape == (20,)
    seed_door = DiffusionProcess(noise_steps=20, amp=False, device=process.device)
    assert seed_door.config == config.replace(device=process.device.type)
    assert process.train_step(batch) == seed_door.train_step(batch)  # same weights, same draws
    with pytest.raises(TypeError, match="not both"):
        DiffusionProcess(config, noise_steps=30)


def test_config_from_a_larger_mapping_takes_its_fields_and_validates_them():
    sacred_config = Config(schedule="linear").to_dict() | {"sweep_id": "sw-1", "cell": "schedule=linear"}
    assert Config.from_mapping(sacred_config) == Config(schedule="linear")
    with pytest.raises(ValueError, match="invalid schedule='cosin'"):
        Config.from_mapping(sacred_config | {"schedule": "cosin"})
    for seed in (-1, 2**32, 1.5, True):  # what Sacred and numpy would refuse later, with no field named
        with pytest.raises(ValueError, match=re.escape(f"invalid seed={seed!r}: valid values are an integer from 0")):
            Config(seed=seed)
    assert Config(seed=2**32 - 1).seed == 2**32 - 1


def test_sampler_arguments_are_checked(tiny_process):
    with pytest.raises(ValueError, match="sampler='dim'"):
        tiny_process.sample(2, sampler="dim")
    with pytest.raises(ValueError, match="steps=50 for sampler='ancestral'"):
        tiny_process.sample(2, steps=50)


def test_same_seed_same_samples_and_range(tiny_process):
    for sampler in ("ancestral", "ddim"):
        a = tiny_process.sample(3, sampler=sampler, steps=None if sampler == "ancestral" else 4, seed=11)
        b = tiny_process.sample(3, sampler=sampler, steps=None if sampler == "ancestral" else 4, seed=11)
        assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1 and a.shape == (3, 1, 28, 28)
    batched = tiny_process.sample(3, sampler="ddim", steps=4, seed=11, batch_size=1)
    assert batched.shape == (3, 1, 28, 28)


def test_resume_from_checkpoint_is_exact(tmp_path, batch):
    """Checkpoint after 3 steps, reload in a fresh process object, continue: bitwise equal to 6 steps straight."""
    options = dict(noise_steps=20, device="cpu", ema=True, dropout=0.1, amp=True)
    straight = DiffusionProcess(**options)
    straight_losses = [straight.train_step(batch) for _ in range(6)]

    first = DiffusionProcess(**options)
    resumed_losses = [first.train_step(batch) for _ in range(3)]
    save_checkpoint(first, tmp_path / "ckpt.pt")
    torch.manual_seed(999)  # disturb the global RNG: the checkpoint must restore it
    resumed = load_checkpoint(tmp_path / "ckpt.pt", device="cpu")
    resumed_losses += [resumed.train_step(batch) for _ in range(3)]

    assert resumed_losses == straight_losses and resumed.step == 6
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(straight.ema_model.parameters(), resumed.ema_model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(straight.sample(2, sampler="ddim", steps=3), resumed.sample(2, sampler="ddim", steps=3))


def test_a_cosine_rate_steps_at_its_schedule_and_resumes_exactly(tmp_path, batch):
    """Each update takes the rate of its step under lr_schedule='cosine' (Adam's group shows it), a run resumed
    from its checkpoint goes on bit for bit, and the rate changes what is learned."""
    options = dict(noise_steps=20, device="cpu", amp=False, lr=1e-3, lr_schedule="cosine", train_steps=6)
    straight, rates = DiffusionProcess(**options), []
    for _ in range(6):
        straight.train_step(batch)
        rates.append(straight.optimizer.param_groups[0]["lr"])
    assert rates == [learning_rate(1e-3, "cosine", s, 6) for s in range(6)]
    first = DiffusionProcess(**options)
    for _ in range(3):
        first.train_step(batch)
    save_checkpoint(first, tmp_path / "ckpt.pt")
    resumed = load_checkpoint(tmp_path / "ckpt.pt", device="cpu")
    for _ in range(3):
        resumed.train_step(batch)
    assert all(torch.equal(a, b) for a, b in zip(straight.model.parameters(), resumed.model.parameters()))
    constant = DiffusionProcess(**options | {"lr_schedule": "constant"})
    for _ in range(6):
        constant.train_step(batch)
    assert not any(torch.equal(a, b) for a, b in zip(straight.model.parameters(), constant.model.parameters()))


def test_loading_a_checkpoint_of_another_config_is_refused(tiny_process):
    other = DiffusionProcess(noise_steps=20, device="cpu", amp=False, schedule="linear")
    with pytest.raises(ValueError, match="schedule"):
        other.load_state_dict(tiny_process.state_dict())
