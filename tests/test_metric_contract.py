"""The metric contract (direction, feature dimension) and the registered fidelity metrics on real MNIST."""

import pytest
import torch

from bench.scoring.features import FEATURES
from bench.scoring.metrics import METRICS, floor, score

HIGHER = {"precision_clf", "recall_clf", "density_clf", "coverage_clf",
          "precision_inception", "recall_inception", "density_inception", "coverage_inception",
          "memorization_inception", "memorization_clf", "memorization_pixels"}


def test_every_metric_declares_direction_and_dimension():
    for name, m in METRICS.items():
        assert m.higher_is_better == (name in HIGHER), name
        assert m.dim == FEATURES.get(m.feature).dim >= 1
        assert m.direction in ("higher is better", "lower is better")
    assert METRICS.get("fid").dim == 2048 and METRICS.get("fd_mnist_clf").dim == 128


def test_best_follows_the_direction():
    import pandas as pd

    v = pd.Series([0.2, 0.9, 0.5])
    assert METRICS.get("precision_clf").best(v) == 0.9 and METRICS.get("fd_mnist_clf").best(v) == 0.2


@pytest.mark.slow(reason="needs the trained MNIST classifier (trained on a fresh cache: ~85 s on one thread) and scores real digits")
@pytest.mark.usefixtures("one_thread")
def test_fidelity_metrics_on_mnist_real_and_noise():
    names = ["precision_clf", "recall_clf", "coverage_clf", "brightness_gap", "fd_mnist_clf", "fd_mnist_clf_inf"]
    real = floor(names, "mnist", 500, n_reference=1000)  # held-out digits vs training digits
    noise = score(names, (torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8),
                  "mnist", n_reference=1000)
    # MNIST's mean pixel intensity is 0.1307 (the normalisation constant everyone uses)
    assert real["brightness_gap_mean_ref"] == pytest.approx(0.1307, abs=0.01)
    assert real["brightness_gap"] < 0.01 and noise["brightness_gap"] > 0.3
    assert real["precision_clf"] > 0.6 and real["recall_clf"] > 0.6 and real["coverage_clf"] > 0.6
    assert noise["precision_clf"] == 0.0 and noise["coverage_clf"] < 0.01
    # FD-infinity removes part of the small-sample bias: below the FD at n = 500 for real digits
    assert 0 < real["fd_mnist_clf_inf"] < real["fd_mnist_clf"] and noise["fd_mnist_clf_inf"] > 100 * real["fd_mnist_clf"]


@pytest.mark.slow(reason="needs the trained MNIST classifier (trained on a fresh cache: ~85 s on one thread) and scores real digits")
@pytest.mark.usefixtures("one_thread")
def test_memorization_on_mnist_copies_heldout_and_noise():
    """Held-out digits sit as far from the training set as held-out digits: ratio 1; copies of
    reference training images: 0; uniform noise: far above 1. The report warns on the copies."""
    from bench.data.datasets import load_dataset
    from bench.scoring.metrics import ORDER_SEED

    names = ["memorization_clf", "memorization_pixels"]
    real = floor(names, "mnist", 300, n_reference=1000)
    train = load_dataset("mnist", "train", "", 28)
    idx = torch.randperm(len(train), generator=torch.Generator().manual_seed(ORDER_SEED))[:300]  # the reference's first 300
    copies = score(names, ((train[idx] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), "mnist", n_reference=1000)
    noise = score(names, (torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8),
                  "mnist", n_reference=1000)
    for m in names:
        assert real[m] == pytest.approx(1.0, abs=0.1), (m, real[m])
        assert copies[m] == pytest.approx(0.0, abs=1e-3) and copies[f"{m}_median_generated"] < 1e-3, (m, copies[m])
        assert noise[m] > 1.5, (m, noise[m])
        assert real[f"{m}_n_heldout"] == 10000  # every MNIST test image


def test_memorization_warning_in_the_report():
    import pandas as pd

    from bench.report.caveats import memorization
    from bench.report.tables import Run

    rows = pd.DataFrame({"label": ["a", "a", "b", "b"], "sampler": "ddim", "sample_steps": 10, "seed": [0, 1, 0, 1],
                         "metrics": "memorization_pixels,sharpness_gap", "memorization_pixels": [0.4, 1.2, 1.1, 1.3],
                         "sharpness_gap": [0.44, 0.2, 1.5, 0.1],  # held-out-based too, but no memorization ratio
                         "trial_id": ["t0", "t1", "t2", "t3"], "dataset": "craters"})
    run = Run(dir=None, rows=rows, floors=None, grid={}, env={})
    (line,) = memorization(run)  # before: sharpness_gap < 1 was also read as memorization
    assert line.startswith("**Memorization?** `a` (ddim:10): `memorization_pixels` < 1 in 1 of 2 seeds (min 0.4)")
    # with the ratio's bootstrap interval (rows since it exists): the lowest one's, and how many exclude 1
    rows = rows.assign(memorization_pixels=[0.4, 0.9, 1.1, 0.95], memorization_pixels_lo=[0.3, 0.8, 0.9, 0.85],
                       memorization_pixels_hi=[0.5, 1.05, 1.3, 1.06], memorization_pixels_n_heldout=45)
    a, b = memorization(Run(dir=None, rows=rows, floors=None, grid={}, env={}))
    assert a.startswith("**Memorization?** `a` (ddim:10): `memorization_pixels` < 1 in 2 of 2 seeds (min 0.4 [0.3, 0.5]; "
                        "the 95% bootstrap interval over the samples and 45 held-out images lies below 1 in 1 of these 2)")
    assert "< 1 in 1 of 2 seeds (min 0.95 [0.85, 1.06]; " in b and "lies below 1 in 0 of these 1)" in b


def test_floor_words_say_when_the_floor_is_a_metrics_value_by_definition():
    """memorization_*'s floor scores the held-out images against themselves as its held-out comparison:
    1 by definition, and the captions say so; a floor of held-out images against the training
    reference alone (fid) keeps its words; sharpness_gap's is training images against held-out ones."""
    import pandas as pd

    from bench.report.tables import Run, floor_words

    floors = pd.DataFrame({"dataset": ["craters"], "memorization_pixels": [1.0], "fid": [213.0], "sharpness_gap": [0.02],
                           "memorization_pixels_floor_split": ["heldout"], "sharpness_gap_floor_split": ["train"]})
    run = Run(dir=None, rows=pd.DataFrame({"dataset": ["craters"]}), floors=floors, grid={}, env={})
    assert floor_words(run, "memorization_pixels") == ("held-out vs training images (the held-out images are also this "
                                                       "metric's held-out comparison: its value by definition)")
    assert floor_words(run, "fid") == "held-out vs training images"
    assert floor_words(run, "sharpness_gap") == "training images scored as the samples are, against the held-out images"


@pytest.mark.usefixtures("one_thread")
def test_sharpness_floor_scores_training_craters_against_the_held_out_ones():
    """The craters' held-out split (45) is sharpness_gap's reference: scoring it against itself gave a
    floor of 0 by construction. The floor is the first 98 training craters' |log| median Laplacian
    variance over the held-out craters' (computed here from the images), at the arms' n."""
    import math

    from bench.data.datasets import load_dataset
    from bench.scoring.features import laplacian_variance

    def median_lv(split):
        x = ((load_dataset("craters", split, "", 64) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        return float(laplacian_variance(x)[:, 0].median()), len(x)

    (train, n_train), (held, n_held) = median_lv("train"), median_lv("heldout")
    got = floor(["sharpness_gap", "memorization_pixels"], "craters", 98, image_size=64)
    assert (n_train, n_held) == (98, 45)
    assert got["sharpness_gap"] == pytest.approx(abs(math.log(train / held)), rel=1e-5) and got["sharpness_gap"] > 0
    assert (got["sharpness_gap_floor_split"], got["sharpness_gap_n_real"]) == ("train", 98)
    assert (got["memorization_pixels_floor_split"], got["memorization_pixels_n_real"], got["n_generated"]) == ("heldout", 45, 45)
    assert got["memorization_pixels"] == 1.0  # held-out against itself: 1 by definition


def test_laplacian_variance_closed_forms():
    from bench.scoring.features import laplacian_variance

    flat = torch.full((1, 3, 8, 8), 77, dtype=torch.uint8)
    board = ((torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 255).to(torch.uint8).expand(1, 1, 8, 8)
    assert laplacian_variance(flat).item() == 0.0
    assert laplacian_variance(board).item() == pytest.approx(16.0, rel=1e-6)  # every 'valid' response is +-4
    ramp = (torch.arange(8, dtype=torch.float32)[None, :] * 30).to(torch.uint8).expand(1, 1, 8, 8)
    assert laplacian_variance(ramp).item() == pytest.approx(0.0, abs=1e-10)  # a linear ramp has zero Laplacian


@pytest.mark.usefixtures("one_thread")
def test_sharpness_gap_on_mnist_real_blurred_and_noise():
    """Held-out digits are as sharp as held-out digits (ratio ~1, gap ~0); a blurred copy is blurrier
    (ratio < 1); noise is far sharper (ratio > 1); the gap grows both ways."""
    import torch.nn.functional as F

    from bench.data.datasets import load_dataset

    real = floor(["sharpness_gap"], "mnist", 500)
    test = ((load_dataset("mnist", "heldout", "", 28)[:500] + 1) * 127.5).round().clamp(0, 255)
    kernel = torch.ones(1, 1, 3, 3) / 9
    blurred = F.conv2d(test, kernel, padding=1).round().clamp(0, 255).to(torch.uint8)
    blur = score(["sharpness_gap"], blurred, "mnist")
    noise = score(["sharpness_gap"], (torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8),
                  "mnist")
    assert real["sharpness_gap_ratio"] == pytest.approx(1.0, abs=0.05) and real["sharpness_gap"] < 0.05
    assert blur["sharpness_gap_ratio"] < 0.5 and noise["sharpness_gap_ratio"] > 5
    assert blur["sharpness_gap"] > 0.5 and noise["sharpness_gap"] > 1.5
