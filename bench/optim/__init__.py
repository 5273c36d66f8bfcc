"""How the weights are optimised and averaged: learning-rate schedules (``lr.LR_SCHEDULES``) and the
weight averages that are evaluated (``ema.EMAS``). Each is a registered object that reads its own
RunConfig fields; the trainer (``bench.training.train``) asks it for a number per step."""
