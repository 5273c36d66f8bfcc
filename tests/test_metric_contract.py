"""The metric contract (direction, feature dimension) and the registered fidelity metrics on real MNIST."""

import pytest
import torch

from bench.features import FEATURES
from bench.metrics import METRICS, floor, score

HIGHER = {"precision_clf", "recall_clf", "density_clf", "coverage_clf",
          "precision_inception", "recall_inception", "density_inception", "coverage_inception"}


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
