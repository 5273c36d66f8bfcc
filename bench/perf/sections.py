"""The sections of ``bench perf``, in the order they run (a leaf of the perf package: the harness and
its report both read it, so neither imports the other for it)."""

ORDER = ("ceiling", "train", "sample", "features", "packing", "fanout", "time_to_fd")
