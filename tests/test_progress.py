"""Progress without a terminal: a line every PROGRESS_EVERY_S seconds with count, rate and ETA
(issue 15: the reference statistics were silent for minutes in a log file)."""

import io

import torch

from bench import progress
from bench.scoring.features import extract_features


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_lines_every_interval_with_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    with progress.Lines(1000, "inception features", "img", stream=out, every=30, clock=clock) as p:
        for _ in range(10):  # 100 images every 10 s: 10 img/s
            clock.t += 10
            p.update(100)
    lines = out.getvalue().splitlines()
    # updates at t = 10..100; a line when 30 s have passed since the last: t = 30, 60, 90, then the closing one
    assert len(lines) == 4
    assert lines[0] == "inception features: 300/1000 img (30%), 10.0 img/s, ETA 70 s"
    assert lines[2] == "inception features: 900/1000 img (90%), 10.0 img/s, ETA 10 s"
    assert lines[-1] == "inception features: 1000/1000 img (100%), 10.0 img/s, done in 1.7 min"


def test_lines_short_loop_is_silent():
    out, clock = io.StringIO(), Clock()
    with progress.Lines(10, "x", stream=out, every=30, clock=clock) as p:
        clock.t += 5
        p.update(10)
    assert out.getvalue() == ""


def test_duration_units():
    assert [progress.duration(s) for s in (3, 270, 3 * 3600, 4 * 86400)] == ["3 s", "4.5 min", "3.0 h", "4.0 days"]


def test_extract_features_reports_in_a_log(monkeypatch, capsys):
    """extract_features(progress=True) without a terminal writes Lines, not a tqdm bar's carriage returns."""
    monkeypatch.setattr(progress, "PROGRESS_EVERY_S", 0.0)
    imgs = torch.randint(0, 256, (6, 1, 16, 16), dtype=torch.uint8)
    feats = extract_features("pixels", imgs, progress=True, batch_size=2)
    err = capsys.readouterr().err
    assert torch.equal(feats, torch.nn.functional.adaptive_avg_pool2d(imgs.float() / 255, 8).flatten(1))  # 8x8 means
    assert "\r" not in err
    assert "pixels features: 6/6 img (100%)" in err
