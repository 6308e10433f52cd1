import pytest

from reprokit.bench import alternating_rounds, median_rate


def test_median_rate_ignores_warm_up_and_a_preempted_step():
    # steps end at these times: step 0 and 1 are warm-up, then 10 ms steps, one preempted
    stamps = [0.5, 0.9, 1.0, 1.01, 1.02, 1.2, 1.21, 1.22]
    assert median_rate(stamps, 100, warmup=2) == pytest.approx(100 / 0.01)
    # without warm-up the first known duration (step 1: 0.4 s) is one of seven
    assert median_rate(stamps, 100) == pytest.approx(100 / 0.01)
    with pytest.raises(ValueError, match="no timed step"):
        median_rate([1.0, 2.0], 10, warmup=2)


def test_alternating_rounds_run_an_untimed_round_then_reverse_the_order():
    calls = []

    def side(name, value):
        def run():
            calls.append(name)
            return value + len(calls)   # the value a call returns: which call it was
        return run

    values, first = alternating_rounds({"a": side("a", 0), "b": side("b", 100)}, rounds=3)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert first == ["a", "b", "a"]
    assert values == {"a": [3, 6, 7], "b": [104, 105, 108]}   # the untimed calls are dropped
