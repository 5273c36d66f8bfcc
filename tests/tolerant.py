"""Compare two generated text files (REPORT.md, tables/*.csv|md|tex) at the precision their numbers
carry: the text between numbers must be identical, integers identical, and each decimal number equal
within a stated tolerance. The rule the committed-report test uses, in one place.

Why a tolerance: the bootstrap columns recompute Fréchet distances (a matrix square root, LAPACK) and
means over resampled sets (BLAS); another CPU's kernels or another thread count move them in the
fifth significant figure (issue 29: boot_lo -0.30198843 committed, -0.30199117 under Sandybridge
kernels, a relative change of 9e-6). A 500-resample percentile interval carries about three
significant figures and a 5-seed paired mean about four, so

    |a - b| <= RTOL * max(|a|, |b|) + ulp(written)

with RTOL = 1e-4 accepts kernel noise (~1e-5) and fails any change of 0.01% or more in a number
written at full precision (a paired difference moved by 1% fails by a factor of 100); ulp(written)
is one unit in the last digit the file wrote ("0.42" -> 0.01), because a number rounded for reading
flips its last digit when the noise straddles a rounding boundary.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

RTOL = 1e-4

# A number as the report writers print it: 12, -0.301, .5, 1.23e-05, 2e+05, nan, inf. Letters or
# digits glued to its front (ids such as "a3f9", "fd_mnist_clf", "ddim:50") stay text, except for
# the separators ':' '=' '(' etc., so "ddim:50" compares "ddim:" as text and 50 as an integer.
NUMBER = re.compile(r"(?<![A-Za-z_\d.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![A-Za-z_\d])|(?<![A-Za-z_])(?:nan|inf)(?![A-Za-z_])")


@dataclass(frozen=True)
class Mismatch:
    line: int
    committed: str
    rebuilt: str
    why: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.why}: committed {self.committed!r}, rebuilt {self.rebuilt!r}"


def written_ulp(token: str) -> float:
    """One unit in the last written digit: "0.42" -> 0.01, "1.23e-05" -> 1e-07, "3." -> 1."""
    mantissa, _, exponent = token.lower().lstrip("+-").partition("e")
    decimals = len(mantissa.partition(".")[2])
    return 10.0 ** (int(exponent or 0) - decimals)


def is_integer(token: str) -> bool:
    return re.fullmatch(r"[-+]?\d+", token) is not None


def numbers_agree(a: str, b: str, rtol: float = RTOL) -> bool:
    """Two number tokens are the same value at the precision written (module docstring)."""
    if a == b:
        return True
    if is_integer(a) and is_integer(b):
        return False  # counts, seeds, steps: exact
    x, y = float(a), float(b)
    if math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y):
        return False
    return abs(x - y) <= rtol * max(abs(x), abs(y)) + max(written_ulp(a), written_ulp(b))


def compare_line(committed: str, rebuilt: str, rtol: float = RTOL) -> str | None:
    """None when the lines agree, else why not."""
    if committed == rebuilt:
        return None
    text_a, text_b = NUMBER.split(committed), NUMBER.split(rebuilt)
    if text_a != text_b:
        return "text differs"
    for a, b in zip(NUMBER.findall(committed), NUMBER.findall(rebuilt)):
        if not numbers_agree(a, b, rtol):
            return f"{a} != {b} beyond rtol {rtol:g} + one written unit"
    return None


def mismatches(committed: str, rebuilt: str, rtol: float = RTOL, limit: int = 5) -> list[Mismatch]:
    """Up to ``limit`` lines where two files differ beyond the tolerance (line counts must match)."""
    a, b = committed.splitlines(), rebuilt.splitlines()
    if len(a) != len(b):
        return [Mismatch(0, f"{len(a)} lines", f"{len(b)} lines", "line count differs")]
    out = []
    for n, (la, lb) in enumerate(zip(a, b), start=1):
        why = compare_line(la, lb, rtol)
        if why:
            out.append(Mismatch(n, la, lb, why))
            if len(out) >= limit:
                break
    return out
