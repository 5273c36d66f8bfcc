"""The CUDA path, on a CUDA device (tools/gpu-check runs these first; without a GPU they are skipped,
and say so). Each compares the device against the CPU or counts what the device did."""

import pytest
import torch

from bench.experiment.config import RunConfig, build_process
from bench.models.unet import build_model
from bench.sampling.sample import SAMPLERS, image_generators

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (tools/gpu-check runs these)")


def _process(noise="gaussian", **kw):
    _, diffusion, noise_obj = build_process(RunConfig(timesteps=100, noise=noise, dataset="synthetic", **kw))
    return diffusion, noise_obj


def test_a_bf16_training_step_learns_on_cuda():
    from bench.training.benchstep import BenchStep

    step = BenchStep("tiny", 1, 16, 32, torch.device("cuda"))
    losses = [float(step().mean()) for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-5:]) < sum(losses[:5])


def test_ddim_on_cuda_matches_the_cpu_within_bf16(monkeypatch):
    """The same weights and the same x_T (the CPU's draw, moved to the device: the device's own batched
    draw is another sequence): bf16 autocast on the device moves the samples by little."""
    d, noise = _process()
    torch.manual_seed(0)
    model = build_model("tiny", 1, 16).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():  # the zero-initialised output layer: give the model something to say
                p.normal_(0.0, 0.02)
    x_cpu = SAMPLERS.get("ddim")(model, d, noise, (4, 1, 16, 16), 10, image_generators(4, 0), "cpu")
    cpu_draw = type(noise).sample_per_item
    monkeypatch.setattr(noise, "sample_per_item", lambda shape, t, gens, device=None: cpu_draw(noise, shape, t, gens).to(device))
    x_gpu = SAMPLERS.get("ddim")(model.cuda(), d, noise, (4, 1, 16, 16), 10, image_generators(4, 0), "cuda").cpu()
    assert 0 < (x_gpu - x_cpu).abs().mean() < 0.05


@pytest.mark.parametrize("noise,kw", [("gaussian", {}), ("gamma", {"theta_0": 0.1}), ("laplace", {})])
def test_device_noise_is_standardised_and_the_same_in_every_arm(noise, kw):
    d, n = _process(noise, **kw)
    gens = image_generators(512, 0)
    a = n.sample_per_item((512, 1, 8, 8), 50, gens, "cuda")
    b = n.sample_per_item((512, 1, 8, 8), 50, image_generators(512, 0), "cuda")
    assert a.device.type == "cuda" and torch.equal(a, b)  # image i: the same noise in every arm
    assert abs(float(a.mean())) < 0.03 and abs(float(a.var()) - 1) < 0.06  # ~4 sd of 32768 draws (Laplace's kurtosis 6)
    assert not torch.equal(a, n.sample_per_item((512, 1, 8, 8), 49, gens, "cuda"))  # another step draws anew


def test_sampling_steps_copy_nothing_from_the_host():
    """Issue 32: the profiler counts host-to-device copies; they do not grow with the steps."""
    from torch.profiler import ProfilerActivity, profile

    d, noise = _process("gamma", theta_0=0.1)
    model = build_model("tiny", 1, 16).cuda().eval()

    def copies(steps):
        SAMPLERS.get("ddpm")(model, d, noise, (8, 1, 16, 16), steps, image_generators(8, 0), "cuda")  # warm
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            SAMPLERS.get("ddpm")(model, d, noise, (8, 1, 16, 16), steps, image_generators(8, 0), "cuda")
            torch.cuda.synchronize()
        return sum(e.count for e in prof.key_averages() if "HtoD" in e.key)

    assert copies(20) <= copies(5) + 1


def test_features_on_cuda_match_the_cpu():
    from bench.scoring.features import extract_features

    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    a, b = extract_features("pixels", x, "cpu"), extract_features("pixels", x, "cuda")
    assert torch.allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("kw", [dict(path="rf", prediction="flow", t_density="logit_normal"),
                                dict(path="edm", prediction="x0", weighting="edm", t_density="lognormal"),
                                dict(immiscible=True, offset_noise=0.1, input_perturbation=0.1)])
def test_every_path_trains_under_bf16_and_euler_matches_the_cpu(kw, tmp_path, monkeypatch):
    """Issue 33: lambda and the coefficients stay float64 -> float32 under the trainer's bf16 autocast;
    euler on the device moves the samples by little from the CPU's (same weights, the CPU's x_T)."""
    from bench.training.train import train

    cfg = RunConfig(evals="euler:8", model="tiny", train_steps=5, batch_size=8, warmup_steps=1, checkpoint_every=5,
                    dropout=0.0, dataset="synthetic", **kw)
    _, d, noise = build_process(cfg)
    res, ema = train(cfg, torch.rand(32, 1, 16, 16) * 2 - 1, d, noise, tmp_path, device="cuda", progress=False)
    assert res.status == "ok" and res.final_loss == res.final_loss
    x_cpu = SAMPLERS.get("euler")(ema.cpu(), d, noise, (4, 1, 16, 16), 8, image_generators(4, 0), "cpu")
    cpu_draw = type(noise).sample_per_item
    monkeypatch.setattr(noise, "sample_per_item", lambda shape, t, gens, device=None: cpu_draw(noise, shape, t, gens).to(device))
    x_gpu = SAMPLERS.get("euler")(ema.cuda(), d, noise, (4, 1, 16, 16), 8, image_generators(4, 0), "cuda").cpu()
    assert torch.isfinite(x_gpu).all() and (x_gpu - x_cpu).abs().mean() < 0.05
