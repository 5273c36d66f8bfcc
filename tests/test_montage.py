"""The report's nearest-training-image montage (the memorization check by eye): its two helpers
against what they invert or find, and the figure from a run's files."""

import pytest
import torch

from bench.images import save_grid
from bench.report.montage import grid_tiles, nearest_training


def test_grid_tiles_inverts_save_grid(tmp_path):
    """save_grid lays N images out ceil(sqrt(N)) per row with 2-pixel padding; the tiles come back
    bit for bit, grey ones as 3 equal channels."""
    g = torch.Generator().manual_seed(0)
    colour = torch.randint(0, 256, (10, 3, 5, 5), generator=g, dtype=torch.uint8)
    save_grid(colour, tmp_path / "c.png")  # 4 per row, 3 rows
    assert torch.equal(grid_tiles(tmp_path / "c.png", 5, 8), colour[:8])
    slots = grid_tiles(tmp_path / "c.png", 5, 64)  # no more than the grid's 12 slots, the last 2 blank
    assert len(slots) == 12 and torch.equal(slots[:10], colour) and not slots[10:].any()
    grey = torch.randint(0, 256, (64, 1, 7, 7), generator=g, dtype=torch.uint8)
    save_grid(grey, tmp_path / "g.png")
    assert torch.equal(grid_tiles(tmp_path / "g.png", 7, 3), grey[:3].expand(-1, 3, -1, -1))


def test_nearest_training_finds_copies_at_distance_zero_and_the_closest_otherwise():
    """Grey images read back from a grid as 3 equal channels are compared in their own channel: the
    distances are memorization_pixels' (an image 3/255 brighter everywhere is 3/255 * sqrt(64) from
    its original in 8x8-pooled grey pixels, not sqrt(3) times that)."""
    g = torch.Generator().manual_seed(1)
    train = torch.randint(0, 250, (20, 1, 16, 16), generator=g, dtype=torch.uint8)
    copies = train[[7, 3]]
    near = train[[12]] + 3  # every pixel of image 12 a little brighter (no clamping below 250 + 3)
    dist, idx = nearest_training(torch.cat([copies, near]).expand(-1, 3, -1, -1), train)
    assert idx.tolist() == [7, 3, 12]
    assert dist[:2].tolist() == [0.0, 0.0] and dist[2].item() == pytest.approx(3 / 255 * 8, rel=1e-6)
    colour = torch.randint(0, 250, (5, 3, 16, 16), generator=g, dtype=torch.uint8)
    dist, idx = nearest_training(colour[[4]] + 3, colour)  # colour: all 3 channels, 3 * 64 pooled cells
    assert idx.tolist() == [4] and dist.item() == pytest.approx(3 / 255 * (3 * 64) ** 0.5, rel=1e-6)


def test_trial_ids_that_look_like_numbers_stay_names(tmp_path):
    """Before: a run whose trial ids all parsed as numbers ("3626076220", "7e05622055" = inf) lost its
    sample montages: samples/3626076220.0_ddim-5.png does not exist."""
    import pandas as pd
    from test_report import make_run

    from bench.report import load_run

    path = make_run(tmp_path / "run")
    rows = pd.read_csv(path / "rows.csv", dtype={"trial_id": str})
    ids = {t: f"{i}e0562205{i}" if i % 2 else f"36260762{i:02d}" for i, t in enumerate(dict.fromkeys(rows["trial_id"]))}
    rows["trial_id"] = rows["trial_id"].map(ids)
    rows.to_csv(path / "rows.csv", index=False)
    assert set(load_run(path).rows["trial_id"]) == set(ids.values())
