"""bench: a benchmark suite for diffusion-model beta schedules and noise types.

See README.md for the quick start, docs/ for the reference (docs/architecture.md: the folders by layer),
and the project's DESIGN.md for the science.
"""

__version__ = "0.1.0"
