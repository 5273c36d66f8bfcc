import math

import pytest
import torch

from bench.models.unet import MODELS, UNet, build_model, count_params, timestep_embedding
from bench.registry import InputError

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def models():
    """One model per (preset, channels): the architecture does not depend on the image size."""
    torch.manual_seed(0)
    cache = {}

    def get(preset, channels):
        if (preset, channels) not in cache:
            cache[(preset, channels)] = build_model(preset, channels, 32).eval().to(memory_format=torch.channels_last)
        return cache[(preset, channels)]

    return get


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("preset", MODELS.names())
def test_output_shape_every_preset_and_size(models, preset, channels):
    model = models(preset, channels)
    # the untrained output is 0 (zero-initialised output conv); give it weights so the values mean something
    torch.nn.init.normal_(model.conv_out.weight, std=0.01)
    for size in (28, 32, 64):
        x = torch.randn(2, channels, size, size).contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            out = model(x, torch.tensor([0, 999]))
        assert out.shape == x.shape
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert out[0].abs().sum() > 0 and not torch.equal(out[0], out[1])


def test_odd_sizes_and_synthetic_size():
    model = build_model("tiny", 1, 16).eval()
    for size in (16, 20, 27, 28):  # 27: 27 -> 14 -> 7 -> 4 -> back to 7, 14, 27
        with torch.no_grad():
            assert model(torch.randn(2, 1, size, size), torch.tensor([3, 4])).shape == (2, 1, size, size)


def test_untrained_model_predicts_zero_and_gradients_reach_every_parameter():
    model = build_model("tiny", 3, 16, dropout=0.0)
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([1, 50]))
    assert torch.equal(out, torch.zeros_like(out))  # every residual branch and the output conv start at zero
    # the zero layers open up one after another: by the third SGD step every parameter gets a gradient
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (model(x, torch.tensor([1, 50])) - x).pow(2).mean().backward()
        opt.step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_channels_last_matches_contiguous():
    torch.manual_seed(1)
    model = build_model("tiny", 1, 28, dropout=0.0).eval()
    for p in model.parameters():  # leave no zero layer: compare real computations
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([5, 600])
    with torch.no_grad():
        a = model(x, t)
        b = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last), t)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_timestep_embedding_closed_form():
    dim = 32
    half = dim // 2
    t = torch.tensor([0, 1, 17, 999])
    emb = timestep_embedding(t, dim)
    assert emb.shape == (4, dim) and emb.dtype == torch.float32
    for row, tt in enumerate(t.tolist()):
        for i in (0, 1, 5, half - 1):
            w = 10000 ** (-i / half)  # the Transformer's 1/10000^(2i/d)
            assert emb[row, i].item() == pytest.approx(math.sin(tt * w), abs=2e-4)
            assert emb[row, half + i].item() == pytest.approx(math.cos(tt * w), abs=2e-4)
    assert torch.equal(emb[0], torch.cat([torch.zeros(half), torch.ones(half)]))  # t = 0
    assert timestep_embedding(t, 7).shape == (4, 7) and (timestep_embedding(t, 7)[:, -1] == 0).all()


def test_parameter_counts():
    tiny = count_params(build_model("tiny", 1, 28))
    assert 500_000 <= tiny <= 2_000_000
    assert tiny == count_params(build_model("tiny", 1, 64))  # the same network at every size
    # DDPM's CIFAR-10 model has 35.7M parameters (Ho et al. 2020, appendix B)
    assert count_params(build_model("base", 3, 32)) == pytest.approx(35.7e6, rel=0.002)
    assert tiny < count_params(build_model("small", 1, 28)) < 35e6


def test_build_model_uses_preset_and_rejects_bad_input():
    model = build_model("tiny", 3, 64, dropout=0.3)
    assert isinstance(model, UNet) and model.image_size == 64 and model.in_channels == 3
    assert all(m.p == 0.3 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    with pytest.raises(InputError, match="did you mean tiny"):
        build_model("tinyy", 1, 28)
    with pytest.raises(InputError, match="image_size"):
        build_model("tiny", 1, 4)
