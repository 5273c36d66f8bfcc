"""Learning curves (eval_at) and image seeds per training seed (DESIGN.md section 5)."""

import json

import pytest

from bench.experiment.config import RunConfig, trial_id
from bench.registry import InputError
from bench.run.trial import run_trial

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = RunConfig(dataset="synthetic", timesteps=50, model="tiny", train_steps=12, batch_size=8, warmup_steps=2,
                  ema_decay=0.9, checkpoint_every=6, evals="ddim:3", n_samples=8, metrics="fd_pixels")


def test_eval_at_parses_fractions_and_steps():
    assert RunConfig(train_steps=1000, eval_at="0.25, 0.5,300").curve_steps == (250, 300, 500)
    assert RunConfig(eval_at="").curve_steps == ()
    for bad in ("1.5", "0", "2000", "abc", "12.5"):
        with pytest.raises(InputError, match="eval_at"):
            RunConfig(train_steps=1000, eval_at=bad).curve_steps  # noqa: B018


def test_new_fields_at_their_defaults_keep_the_trial_id():
    cfg = SMOKE.replace(eval_at="", curve_metrics="", image_seeds="shared")
    assert trial_id(cfg) == trial_id(SMOKE)
    assert trial_id(SMOKE.replace(image_seeds="per_seed")) != trial_id(SMOKE)


def test_image_seeds_per_training_seed():
    shared = [SMOKE.replace(seed=s).image_seed0 for s in (0, 1)]
    per_seed = [SMOKE.replace(seed=s, image_seeds="per_seed").image_seed0 for s in (0, 1, 2)]
    assert shared == [0, 0]
    assert len(set(per_seed)) == 3  # different across training seeds ...
    arms = {SMOKE.replace(seed=1, image_seeds="per_seed", schedule=s).image_seed0 for s in ("linear", "cosine")}
    assert len(arms) == 1  # ... identical across arms of one seed
    assert min(abs(a - b) for a in per_seed for b in per_seed if a != b) >= 2**20  # no image seed shared


def test_learning_curve_rows_and_resume(tmp_path):
    cfg = SMOKE.replace(eval_at="0.5", image_seeds="per_seed")
    rows = run_trial(cfg, tmp_path, device="cpu", progress=False)
    assert [(r["train_step"], r["sampler"], r["sample_steps"]) for r in rows] == [(6, "ddim", 3), (12, "ddim", 3)]
    assert all(r["status"] == "ok" and r["fd_pixels"] > 0 for r in rows)
    assert rows[0]["fd_pixels"] != rows[1]["fd_pixels"]  # the EMA at step 6 is not the final one
    assert 0 < rows[0]["train_seconds"] < rows[1]["train_seconds"] < rows[1]["train_s"]  # training time only
    assert (tmp_path / "samples" / "ddim-3-step6.png").exists()
    kept = json.loads((tmp_path / "curve.json").read_text())
    assert [r["train_step"] for r in kept] == [6]
    # a finished trial re-run from its work dir: the curve row comes from curve.json, not recomputed
    kept[0]["fd_pixels"] = -1.0
    (tmp_path / "curve.json").write_text(json.dumps(kept))
    again = run_trial(cfg, tmp_path, device="cpu", progress=False)
    assert again[0]["fd_pixels"] == -1.0 and again[1]["fd_pixels"] == pytest.approx(rows[1]["fd_pixels"])


def test_sampled_images_follow_image_seed0(tmp_path, monkeypatch):
    import bench.run.trial as trial

    seen = []
    real = trial.sample_images

    def spy(*args, **kw):
        seen.append(args[7])
        return real(*args, **kw)

    monkeypatch.setattr(trial, "sample_images", spy)
    for seed in (0, 1):
        run_trial(SMOKE.replace(seed=seed, image_seeds="per_seed"), tmp_path / str(seed), device="cpu", progress=False)
    assert seen == [SMOKE.replace(seed=s, image_seeds="per_seed").image_seed0 for s in (0, 1)]
    assert len(set(seen)) == 2


def test_per_image_features_are_kept_for_the_bootstrap(tmp_path):
    import numpy as np

    from bench.scoring.features import extract_features

    run_trial(SMOKE, tmp_path, device="cpu", progress=False)
    kept = np.load(tmp_path / "per_image" / "ddim-3.npz")
    assert list(kept) == ["pixels"] and kept["pixels"].shape == (8, 64) and kept["pixels"].dtype == np.float16
    # row i is image i: the features of the final EMA's samples re-drawn with the same image seeds
    from bench.experiment.config import build_process
    from bench.images import to_uint8
    from bench.sampling.sample import sample_images, sampler_options
    from bench.training.train import load_ema

    _, diffusion, noise = build_process(SMOKE)
    ema = load_ema(tmp_path, SMOKE, 1, 16)
    x = sample_images(ema, diffusion, noise, "ddim", 3, 8, (1, 16, 16), SMOKE.image_seed0, 8, "cpu",
                      options=sampler_options("ddim", SMOKE))
    expected = extract_features("pixels", to_uint8(x)).numpy()
    assert np.allclose(kept["pixels"].astype(np.float32), expected, atol=1e-3)
