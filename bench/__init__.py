"""bench: a benchmark suite for diffusion-model beta schedules and noise types.

See README.md for the quick start and ../shared/DESIGN.md (mirrored in docs) for the science.
"""

__version__ = "0.1.0"
