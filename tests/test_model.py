import pytest
import torch
from torch import nn

from core.config import Config
from core.model import (SEED_BREAKDOWN, BottleneckBlock, DiffusionModel, DownBlock, ResBlock, SelfAttention,
                        UpBlock, parameter_breakdown, sinusoidal_embedding)


@pytest.mark.parametrize("batch_size", [1, 7, 64])
def test_output_shape_matches_input(batch_size):
    model = DiffusionModel(image_size=28, channels=1)
    x = torch.randn(batch_size, 1, 28, 28)
    t = torch.randint(0, 1000, (batch_size,))
    assert model(x, t).shape == (batch_size, 1, 28, 28)


def test_structure_follows_the_spec():
    model = DiffusionModel(image_size=28, channels=1)
    assert isinstance(model.init_conv, nn.Conv2d) and model.init_conv.out_channels == 32
    assert [type(b) for b in model.down_blocks] == [DownBlock, DownBlock]
    assert isinstance(model.bottleneck, BottleneckBlock)
    assert isinstance(model.bottleneck.res1, ResBlock) and isinstance(model.bottleneck.res2, ResBlock)
    assert isinstance(model.bottleneck.attn, SelfAttention)
    assert [type(b) for b in model.up_blocks] == [UpBlock, UpBlock]
    assert model.out_norm.num_groups == 8 and model.out_norm.num_channels == 32
    assert model.out_conv.out_channels == 1


def test_resolutions_28_14_7():
    model = DiffusionModel(image_size=28, channels=1)
    shapes = []
    for block in model.down_blocks:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o[0].shape[1:])))
    model(torch.randn(2, 1, 28, 28), torch.tensor([1, 2]))
    assert shapes == [(64, 14, 14), (128, 7, 7)]


def test_parameter_breakdown_within_15_percent_of_the_seed():
    parts = parameter_breakdown(DiffusionModel(image_size=28, channels=1))
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert abs(parts["total"] - SEED_BREAKDOWN["total"]) / SEED_BREAKDOWN["total"] < 0.15
    assert abs(parts["time embedding"] - 132_000) / 132_000 < 0.05


def test_attention_false_removes_only_the_attention():
    with_attn, without = DiffusionModel(Config()), DiffusionModel(Config(attention=False))
    assert not any(isinstance(m, SelfAttention) for m in without.modules())
    removed = parameter_breakdown(with_attn)["total"] - parameter_breakdown(without)["total"]
    assert removed == sum(p.numel() for p in with_attn.bottleneck.attn.parameters())


def test_dropout_sits_inside_every_resblock():
    model = DiffusionModel(image_size=28, channels=1, dropout=0.1)
    resblocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(resblocks) == 6
    assert all(isinstance(r.dropout, nn.Dropout) and r.dropout.p == 0.1 for r in resblocks)
    assert not any(isinstance(m, nn.Dropout) for m in DiffusionModel(image_size=28, channels=1).modules())


def test_the_model_takes_a_config_or_the_seeds_keywords():
    torch.manual_seed(0)
    from_config = DiffusionModel(Config(dropout=0.1))
    torch.manual_seed(0)
    from_keywords = DiffusionModel(image_size=28, channels=1, hidden_dims=[32, 64, 128], time_dim=128, dropout=0.1)
    assert all(torch.equal(a, b)
               for a, b in zip(from_config.state_dict().values(), from_keywords.state_dict().values()))
    with pytest.raises(TypeError, match="not both"):
        DiffusionModel(Config(), dropout=0.1)
    with pytest.raises(ValueError, match="invalid dropout=1.5"):
        DiffusionModel(dropout=1.5)


def test_time_conditioning_changes_the_output():
    model = DiffusionModel(image_size=28, channels=1)
    x = torch.randn(1, 1, 28, 28)
    assert not torch.allclose(model(x, torch.tensor([0])), model(x, torch.tensor([999])))


def test_sinusoidal_embedding_values():
    emb = sinusoidal_embedding(torch.tensor([0, 3]), 8)
    assert emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # sin(0) = 0, cos(0) = 1
    assert emb[1, 0].item() == pytest.approx(torch.tensor(3.0).sin().item())  # frequency 1 first


def test_model_main_prints_breakdown_beside_seed():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "core.model"], capture_output=True, text=True, check=True).stdout
    assert "1,242,305" in out and "1,200,000" in out and "bottleneck" in out
