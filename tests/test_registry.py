import pytest

from bench.process.schedules import SCHEDULES
from bench.registry import InputError, Registry, UnknownNameError


def test_unknown_name_suggests_close_match_and_lists_known():
    with pytest.raises(UnknownNameError) as e:
        SCHEDULES.get("cosin")
    msg = str(e.value)
    assert "did you mean cosine?" in msg
    for name in SCHEDULES:
        assert name in msg
    assert isinstance(e.value, InputError)


def test_unknown_name_without_close_match_has_no_suggestion():
    with pytest.raises(UnknownNameError) as e:
        SCHEDULES.get("zzzzzz")
    assert "did you mean" not in str(e.value) and "known: " in str(e.value)


def test_register_and_duplicate_is_error():
    reg = Registry("widget")

    @reg.register("a")
    def a():
        return 1

    assert reg.get("a") is a and "a" in reg and reg.names() == ["a"] and len(reg) == 1
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
