"""The control signal: per-type states, the swap rule (and swapping back), early stop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from biasunlearn.errors import ConfigError
from biasunlearn.methods.control import ControlCallback, ControlConfig, type_state, update_swaps
from biasunlearn.methods.data import SwapState


def _r(ss=50.0, gap=0.0, se=0.1):
    return {"SS": ss, "LMS": 90.0, "gap": gap, "gap_se": se, "soft_ss": ss, "soft_ss_se": 2.0, "n": 50}


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
        {"types": {"race": _r(gap=-0.5), "gender": _r(gap=0.5)}, "SS": 55.0, "LMS": 90.0, "ICAT": 70.0,
         "soft_ss": 55.0, "soft_ss_se": 1.0},
        {"types": {"race": _r(gap=0.0), "gender": _r(gap=0.0)}, "SS": 50.0, "LMS": 89.0, "ICAT": 89.0,
         "soft_ss": 50.0, "soft_ss_se": 1.0},
    ])
    monkeypatch.setattr(control, "control_reading", lambda *a, **k: next(readings))
    swap = SwapState()
    cb = ControlCallback(tok, [], ControlConfig(every=1, signal="gap"), swap)
    ctl = _Ctl()
    cb._read(model, 0, ctl)
    assert swap.is_swapped("race") and not swap.is_swapped("gender") and not ctl.should_training_stop
    cb._read(model, 1, ctl)
    assert ctl.should_training_stop  # every type balanced after step 0
    assert cb.best["step"] == 1 and math.isclose(cb.best["ICAT"], 89.0)
    assert [h["changed"] for h in cb.history] == [["race"], []]
    # the latest reading's distance from 50 (soft SS here) is kept for adaptive sampling
    assert swap.distance == {"race": 0.0, "gender": 0.0}


def test_patience_needs_consecutive_balanced_readings(monkeypatch, tiny_model_and_tokenizer):
    """With patience 2 a single all-balanced reading does not stop; two in a row do, and an unbalanced
    reading in between starts the count again."""
    import biasunlearn.methods.control as control

    model, tok = tiny_model_and_tokenizer
    bal = {"types": {"race": _r(gap=0.0)}, "SS": 50.0, "LMS": 90.0, "ICAT": 90.0, "soft_ss": 50.0,
           "soft_ss_se": 1.0}
    off = {**bal, "types": {"race": _r(gap=0.5)}}
    seq = iter([off, bal, off, bal, bal])
    monkeypatch.setattr(control, "control_reading", lambda *a, **k: next(seq))
    cb = ControlCallback(tok, [], ControlConfig(every=1, signal="gap", patience=2), SwapState())
    stops = []
    for step in range(5):
        ctl = _Ctl()
        cb._read(model, step, ctl)
        stops.append(ctl.should_training_stop)
    assert stops == [False, False, False, False, True]
    assert [h["all_balanced"] for h in cb.history] == [False, True, False, True, True]
    with pytest.raises(ConfigError, match="--control-patience"):
        ControlConfig(patience=0)


def test_callback_records_each_types_distance_from_50(monkeypatch, tiny_model_and_tokenizer):
    import biasunlearn.methods.control as control

    model, tok = tiny_model_and_tokenizer
    reading = {"types": {"race": {**_r(gap=0.0), "soft_ss": 46.5, "SS": 45.0},
                         "gender": {**_r(gap=0.0), "soft_ss": 57.0, "SS": 60.0}},
               "SS": 52.0, "LMS": 90.0, "ICAT": 80.0, "soft_ss": 51.0, "soft_ss_se": 1.0}
    monkeypatch.setattr(control, "control_reading", lambda *a, **k: reading)
    swap = SwapState()
    ControlCallback(tok, [], ControlConfig(every=1), swap)._read(model, 0, _Ctl())
    assert swap.distance == {"race": -3.5, "gender": 7.0}
    ControlCallback(tok, [], ControlConfig(every=1, signal="ss"), swap)._read(model, 0, _Ctl())
    assert swap.distance == {"race": -5.0, "gender": 10.0}


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


def test_on_reversed_rest_rests_a_reversed_type_instead_of_swapping_it():
    cfg = ControlConfig(on_reversed="rest")
    swap = SwapState()
    changed = update_swaps(swap, {"race": "reversed", "gender": "stereotypical", "religion": "balanced"}, cfg)
    assert changed == [] and not swap.is_swapped("race")
    assert swap.is_resting("race") and not swap.is_resting("gender") and not swap.is_resting("religion")
    # stereotypical again: drawn again, still unswapped
    update_swaps(swap, {"race": "stereotypical", "gender": "stereotypical", "religion": "balanced"}, cfg)
    assert not swap.is_resting("race") and not swap.is_swapped("race")
    # with rest_balanced too, balanced and reversed types both rest
    both = SwapState()
    update_swaps(both, {"race": "reversed", "gender": "stereotypical", "religion": "balanced"},
                 ControlConfig(on_reversed="rest", rest_balanced=True))
    assert both.is_resting("race") and both.is_resting("religion") and not both.is_resting("gender")
    # the no_swapping ablation ignores it: nothing rests or swaps
    off = SwapState()
    update_swaps(off, {"race": "reversed"}, ControlConfig(on_reversed="rest", swapping=False))
    assert not off.is_resting("race") and not off.is_swapped("race")
    with pytest.raises(ConfigError, match="--on-reversed"):
        ControlConfig(on_reversed="flip")


def test_soft_ss_by_hand():
    from biasunlearn.methods.control import soft_ss

    # d = 0 -> 50; d = tau·ln 3 -> σ = 3/4 -> 75; d = -tau·ln 3 -> 25
    tau = 0.1
    m, se = soft_ss(np.array([0.0, tau * math.log(3), -tau * math.log(3)]), tau)
    assert m == pytest.approx(50.0)
    assert se == pytest.approx(25.0 / math.sqrt(3))  # sd of (50, 75, 25) is 25
    m2, _ = soft_ss(np.array([tau * math.log(3)] * 4), tau)
    assert m2 == pytest.approx(75.0)
    # bounded per example: one huge gap moves it by at most 100/n
    m3, _ = soft_ss(np.array([0.0, 0.0, 0.0, 50.0]), tau)
    assert m3 == pytest.approx(62.5)


def test_soft_ss_states_and_stop_rule():
    from biasunlearn.methods.control import should_stop

    cfg = ControlConfig(signal="soft_ss", z=1.0)

    def r(soft, se=2.0):
        return {"SS": 50.0, "soft_ss": soft, "soft_ss_se": se, "gap": 0.0, "gap_se": 1.0}

    assert type_state(r(51.9), cfg) == "balanced"
    assert type_state(r(52.1), cfg) == "stereotypical"
    assert type_state(r(47.9), cfg) == "reversed"
    assert type_state(r(47.9), ControlConfig(signal="soft_ss", z=1.5)) == "balanced"
    states = {"race": "balanced", "gender": "balanced"}
    assert should_stop({**r(51.0, 1.5)}, states, cfg)
    assert not should_stop({**r(51.6, 1.5)}, states, cfg)  # every type balanced, the whole set is not
    assert not should_stop(r(50.0), {"race": "balanced", "gender": "stereotypical"}, cfg)
    assert should_stop({"SS": 55.0}, states, ControlConfig(signal="ss"))  # the paper's rule: types only
    with pytest.raises(ConfigError, match="--control-tau"):
        ControlConfig(tau=0.0)


def test_swap_state_round_trip_keeps_swaps_rests_and_distances(tmp_path):
    from biasunlearn.methods.trainer import load_checkpoint_state, save_swap_state

    state = SwapState(swapped={"race": True}, resting={"gender": True}, distance={"race": -3.0, "gender": 1.5})
    save_swap_state(tmp_path, state, [{"step": 5}], {"best": {"step": 0}, "train_seconds": 1.5})
    loaded, history, extra = load_checkpoint_state(tmp_path)
    assert loaded == state and history == [{"step": 5}]
    assert extra == {"best": {"step": 0}, "train_seconds": 1.5}
    assert load_checkpoint_state(tmp_path / "missing") == (SwapState(), [], {})


def test_trim_train_log_drops_records_after_the_checkpoint_and_a_cut_line(tmp_path):
    from biasunlearn.methods.trainer import trim_train_log

    p = tmp_path / "train_log.jsonl"
    assert trim_train_log(p, 3) == 0 and not p.exists()
    p.write_text('{"step": 1, "loss": 1}\n{"step": 2, "loss": 2}\n{"step": 3}\n{"step": 4, "loss": 4}\n{"step": 5, "lo')
    assert trim_train_log(p, 3) == 2
    assert [json.loads(x)["step"] for x in p.read_text().splitlines()] == [1, 2, 3]
    assert trim_train_log(p, 3) == 0


def test_callback_logs_swaps_and_resting_types(monkeypatch, caplog, tiny_model_and_tokenizer):
    import logging

    import biasunlearn.methods.control as control

    model, tok = tiny_model_and_tokenizer
    reading = {"types": {"race": {**_r(), "soft_ss": 40.0, "SS": 40.0},
                         "gender": {**_r(), "soft_ss": 60.0, "SS": 60.0}},
               "SS": 50.0, "LMS": 90.0, "ICAT": 80.0, "soft_ss": 50.0, "soft_ss_se": 1.0}
    monkeypatch.setattr(control, "control_reading", lambda *a, **k: reading)
    with caplog.at_level(logging.INFO, logger="biasunlearn.methods.control"):
        ControlCallback(tok, [], ControlConfig(every=1, on_reversed="rest"), SwapState())._read(model, 5, _Ctl())
        ControlCallback(tok, [], ControlConfig(every=1), SwapState())._read(model, 6, _Ctl())
        # a type swapped at an earlier reading stays listed; only this reading's change is "changed now"
        ControlCallback(tok, [], ControlConfig(every=1), SwapState(swapped={"religion": True}))._read(model, 7, _Ctl())
    rest_line, swap_line, later_line = [r.getMessage() for r in caplog.records if "control step" in r.getMessage()]
    assert rest_line.endswith("| resting: race") and "swapped" not in rest_line
    assert swap_line.endswith("| swapped: race | changed now: race") and "resting" not in swap_line
    assert later_line.endswith("| swapped: religion, race | changed now: race")
