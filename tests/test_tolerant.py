"""The rule the committed-report test compares by (tests/tolerant.py): kernel noise passes, a real
change fails."""

import re
from pathlib import Path

import pytest
from tolerant import NUMBER, compare_line, mismatches, numbers_agree, written_ulp

TABLE = Path(__file__).resolve().parent.parent / "results" / "objectives_zt" / "quick-20261129-1408" / "tables" / "paired_fd_mnist_clf.csv"


def scale_floats(text: str, factor: float, only_first: bool = False) -> str:
    """Every decimal number (or the first decimal number after the header) times ``factor``, written at full precision."""
    done = []

    def repl(m):
        tok = m.group(0)
        if re.fullmatch(r"[-+]?\d+", tok) or tok in ("nan", "inf") or (only_first and done):
            return tok
        done.append(tok)
        return repr(float(tok) * factor)

    head, _, body = text.partition("\n")
    return head + "\n" + NUMBER.sub(repl, body)


def test_the_issue_29_example_passes_and_a_one_percent_move_fails():
    assert numbers_agree("-0.30198843381608526", "-0.30199117122992786")  # Sandybridge kernels: 9e-6 relative
    assert not numbers_agree("-0.30198843381608526", repr(-0.30198843381608526 * 1.01))
    assert not numbers_agree("-0.30198843381608526", repr(-0.30198843381608526 * 1.001))


@pytest.mark.parametrize("a, b, same", [
    ("0.42", "0.43", True),  # one unit in the last written digit: a rounding boundary straddled
    ("0.42", "0.44", False),
    ("1.23e-05", "1.24e-05", True), ("1.23e-05", "1.25e-05", False),
    ("5", "5", True), ("5", "6", False),  # integers (counts, seeds, steps) are exact
    ("nan", "nan", True), ("nan", "0.1", False), ("inf", "1e308", False),
])
def test_numbers_agree_at_their_written_precision(a, b, same):
    assert numbers_agree(a, b) is same


def test_written_ulp():
    assert written_ulp("0.42") == pytest.approx(0.01) and written_ulp("3") == 1
    assert written_ulp("-1.5e+03") == pytest.approx(100) and written_ulp("2e-05") == pytest.approx(1e-5)


def test_text_must_match_exactly_and_ids_stay_text():
    assert compare_line("best arm cosine, ddim:50 (n = 5)", "best arm cosine, ddim:50 (n = 5)") is None
    assert compare_line("best arm cosine", "best arm sigmoid") == "text differs"
    assert compare_line("verdict: agrees", "verdict: disagrees") == "text differs"
    assert compare_line("trial a3f9e1", "trial a3f9e2") == "text differs"  # digits inside a word are text
    assert compare_line("ddim:50", "ddim:51") is not None  # a step count is an integer: exact
    assert compare_line("FD 26.39 [5.16, 47.62]", "FD 26.39 [5.17, 47.62]") is None


def test_on_a_committed_table_kernel_noise_passes_and_one_cell_moved_by_one_percent_fails():
    text = TABLE.read_text()
    assert not mismatches(text, scale_floats(text, 1 + 1e-5))  # every float moved by 1e-5: kernel-noise sized
    bad = mismatches(text, scale_floats(text, 1.01, only_first=True))
    assert len(bad) == 1 and bad[0].line == 2 and "beyond rtol" in bad[0].why
    assert mismatches(text, text + "extra\n")[0].why == "line count differs"
