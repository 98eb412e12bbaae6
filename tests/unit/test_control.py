"""The control signal: per-type states, the swap rule (and swapping back), early stop."""

from __future__ import annotations

import math

import pytest

from biasunlearn.errors import ConfigError
from biasunlearn.methods.control import ControlCallback, ControlConfig, type_state, update_swaps
from biasunlearn.methods.data import SwapState


def _r(ss=50.0, gap=0.0, se=0.1):
    return {"SS": ss, "LMS": 90.0, "gap": gap, "gap_se": se, "n": 50}


def test_ss_rule_states():
    cfg = ControlConfig(signal="ss", threshold=2.0)
    assert type_state(_r(ss=52.0), cfg) == "balanced"  # |52 - 50| <= 2
    assert type_state(_r(ss=48.0), cfg) == "balanced"
    assert type_state(_r(ss=52.1), cfg) == "stereotypical"
    assert type_state(_r(ss=47.9), cfg) == "reversed"  # below 50 by more than the threshold


def test_gap_rule_uses_standard_error():
    cfg = ControlConfig(signal="gap", z=1.0)
    assert type_state(_r(gap=0.09, se=0.1), cfg) == "balanced"
    assert type_state(_r(gap=0.11, se=0.1), cfg) == "stereotypical"
    assert type_state(_r(gap=-0.11, se=0.1), cfg) == "reversed"
    # A wider tolerance (z = 2) turns the same readings balanced.
    assert type_state(_r(gap=-0.11, se=0.1), ControlConfig(signal="gap", z=2.0)) == "balanced"


def test_swap_and_swap_back():
    cfg = ControlConfig()
    swap = SwapState()
    assert update_swaps(swap, {"race": "reversed", "gender": "stereotypical"}, cfg) == ["race"]
    assert swap.is_swapped("race") and not swap.is_swapped("gender")
    # Balanced keeps the current roles; stereotypical again swaps back.
    assert update_swaps(swap, {"race": "balanced"}, cfg) == []
    assert swap.is_swapped("race")
    assert update_swaps(swap, {"race": "stereotypical"}, cfg) == ["race"]
    assert not swap.is_swapped("race")


def test_no_swapping_method_never_swaps():
    swap = SwapState()
    assert update_swaps(swap, {"race": "reversed"}, ControlConfig(swapping=False)) == []
    assert not swap.is_swapped("race")


def test_bad_control_options():
    with pytest.raises(ConfigError, match="--control-signal"):
        ControlConfig(signal="noise")
    with pytest.raises(ConfigError, match="--control-every"):
        ControlConfig(every=0)


class _Ctl:
    should_training_stop = False


def test_callback_swaps_stops_and_keeps_best(monkeypatch, tiny_model_and_tokenizer):
    """Readings are faked; the callback must swap, stop when all types are balanced, and track the best ICAT."""
    import biasunlearn.methods.control as control

    model, tok = tiny_model_and_tokenizer
    readings = iter([
        {"types": {"race": _r(gap=-0.5), "gender": _r(gap=0.5)}, "SS": 55.0, "LMS": 90.0, "ICAT": 70.0},
        {"types": {"race": _r(gap=0.0), "gender": _r(gap=0.0)}, "SS": 50.0, "LMS": 89.0, "ICAT": 89.0},
    ])
    monkeypatch.setattr(control, "control_reading", lambda *a, **k: next(readings))
    swap = SwapState()
    cb = ControlCallback(tok, [], ControlConfig(every=1), swap)
    ctl = _Ctl()
    cb._read(model, 0, ctl)
    assert swap.is_swapped("race") and not swap.is_swapped("gender") and not ctl.should_training_stop
    cb._read(model, 1, ctl)
    assert ctl.should_training_stop  # every type balanced after step 0
    assert cb.best["step"] == 1 and math.isclose(cb.best["ICAT"], 89.0)
    assert [h["changed"] for h in cb.history] == [["race"], []]


def test_rest_balanced_types_rest_until_they_leave_the_tolerance():
    cfg = ControlConfig(rest_balanced=True)
    swap = SwapState()
    update_swaps(swap, {"race": "balanced", "gender": "stereotypical"}, cfg)
    assert swap.is_resting("race") and not swap.is_resting("gender")
    update_swaps(swap, {"race": "reversed", "gender": "balanced"}, cfg)
    assert not swap.is_resting("race") and swap.is_swapped("race") and swap.is_resting("gender")
    # off by default: nothing rests
    other = SwapState()
    update_swaps(other, {"race": "balanced"}, ControlConfig())
    assert not other.is_resting("race")
