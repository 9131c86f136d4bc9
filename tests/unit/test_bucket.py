"""Token bucket: native and reference, unit cases and properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admission.bucket import TokenBucket
from tests.oracles import admission as reference

IMPLS = pytest.mark.parametrize("impl", [TokenBucket, reference.TokenBucket],
                                ids=["native", "reference"])


@IMPLS
def test_burst_then_rate(impl):
    b = impl(2.0, 3, 10.0)
    assert [b.try_take(10.0) for _ in range(4)] == [True, True, True, False]
    assert b.time_until(10.0) == pytest.approx(0.5)
    assert not b.try_take(10.4)
    assert b.try_take(10.5)
    assert b.tokens(100.0) == 3.0  # capped at the burst


@IMPLS
def test_rate_zero_is_unlimited(impl):
    b = impl(0.0, 0, 0.0)
    assert all(b.try_take(0.0, 1000) for _ in range(100))
    assert b.time_until(0.0, 1e9) == 0.0 and b.tokens(0.0) == math.inf


@IMPLS
def test_burst_zero_means_one_second_of_rate(impl):
    assert impl(5.0, 0, 0.0).capacity == 5.0
    assert impl(0.5, 0, 0.0).capacity == 1.0


@IMPLS
def test_more_than_capacity_never_comes(impl):
    assert impl(1.0, 2, 0.0).time_until(0.0, 3) == math.inf


@IMPLS
def test_clock_going_backwards_mints_nothing(impl):
    b = impl(1.0, 1, 100.0)
    assert b.try_take(100.0)
    assert not b.try_take(50.0)
    assert not b.try_take(100.5)
    assert b.try_take(101.0)


@IMPLS
def test_reserve_queues_callers_behind_each_other(impl):
    b = impl(1.0, 1, 0.0)
    assert b.reserve(0.0) == 0.0
    assert b.reserve(0.0) == pytest.approx(1.0)
    assert b.reserve(0.0) == pytest.approx(2.0)
    assert b.reserve(0.0, 1, max_wait=2.5) == -1.0  # refused, nothing taken
    assert b.tokens(0.0) == pytest.approx(-2.0)
    assert not b.idle(2.5) and b.idle(3.0)


@IMPLS
def test_invalid_arguments(impl):
    with pytest.raises(ValueError):
        impl(-1.0, 1, 0.0)
    with pytest.raises(ValueError):
        impl(1.0, -1, 0.0)


steps = st.lists(st.tuples(st.floats(0, 2, allow_nan=False), st.integers(1, 3),
                           st.sampled_from(["take", "reserve", "until"])), max_size=80)


@settings(max_examples=150, deadline=None)
@given(st.floats(0.1, 50), st.integers(0, 20), steps)
def test_property_never_more_than_burst_plus_rate_and_matches_reference(rate, burst, script):
    native, model = TokenBucket(rate, burst, 0.0), reference.TokenBucket(rate, burst, 0.0)
    now = taken = 0.0
    for dt, n, op in script:
        now += dt
        if op == "take":
            got = native.try_take(now, n)
            assert got == model.try_take(now, n)
            taken += n * got
        elif op == "reserve":
            got = native.reserve(now, n, 1.0)
            assert got == pytest.approx(model.reserve(now, n, 1.0))
            # A reservation is only usable once due: count it then.
            taken += n * (got == 0.0)
        else:
            assert native.time_until(now, n) == pytest.approx(model.time_until(now, n))
        # One microsecond of refill may be granted early (see EARLY).
        assert taken <= native.capacity + rate * (now + 1e-6) + 1e-9
        assert native.tokens(now) == pytest.approx(model.tokens(now))


@settings(max_examples=200, deadline=None)
@given(st.floats(0.01, 10_000), st.integers(1, 5), st.floats(0, 2.2e9))
def test_property_waiting_time_until_always_suffices(rate, burst, now):
    """A timer armed for time_until() finds the token, even at Unix-time scale."""
    for impl in (TokenBucket, reference.TokenBucket):
        bucket = impl(rate, burst, now)
        while bucket.try_take(now):
            pass
        wait = bucket.time_until(now)
        assert wait > 0
        assert bucket.try_take(now + wait)


# -- allotment: retuning, grants and give-backs ---------------------------------------

@IMPLS
def test_set_rate_keeps_what_accrued_and_mints_nothing(impl):
    b = impl(2.0, 4, 0.0)
    assert all(b.try_take(0.0) for _ in range(4))
    # One second at the old rate accrued 2 tokens before the change.
    b.set_rate(1.0, 10.0, 3)
    assert (b.rate, b.capacity) == (10.0, 3.0)
    assert b.tokens(1.0) == pytest.approx(2.0)
    assert b.tokens(1.05) == pytest.approx(2.5)
    # A lowered burst caps the level; it never raises it.
    b.set_rate(2.0, 10.0, 1)
    assert b.tokens(2.0) == 1.0
    b.set_rate(2.0, 10.0, 5)
    assert b.tokens(2.0) == 1.0
    # burst 0: one second of the new rate, at least one token.
    b.set_rate(2.0, 0.5, 0)
    assert b.capacity == 1.0


@IMPLS
def test_rate_zero_after_set_rate_means_no_refill_not_unlimited(impl):
    b = impl(1.0, 2, 0.0)
    b.set_rate(0.0, 0.0, 2)
    assert not b.unlimited
    assert b.try_take(0.0) and b.try_take(0.0) and not b.try_take(1000.0)
    assert b.time_until(1000.0) == math.inf
    assert b.reserve(1000.0, 1.0, 5.0) == -1.0
    assert b.deposit(1000.0, 5.0) == 2.0  # up to the capacity
    assert b.try_take(1000.0) and b.try_take(1000.0) and not b.try_take(1000.0)


@IMPLS
def test_deposit_and_withdraw_stay_within_zero_and_capacity(impl):
    b = impl(1.0, 3, 0.0)
    assert b.withdraw(0.0, 2.0) == 2.0
    assert b.deposit(0.0, 0.5) == 0.5
    assert b.withdraw(0.0, 10.0) == 1.5  # never into debt
    assert b.withdraw(0.0, 1.0) == 0.0
    assert b.deposit(0.5, 10.0) == 2.5  # half a token accrued, room for the rest
    assert b.tokens(0.5) == 3.0
    b.reserve(0.5, 3.0)
    b.reserve(0.5, 1.0)  # in debt: nothing to withdraw
    assert b.withdraw(0.5, 1.0) == 0.0


@IMPLS
def test_unlimited_bucket_has_no_rate_to_set_and_moves_no_tokens(impl):
    b = impl(0.0, 0, 0.0)
    with pytest.raises(ValueError):
        b.set_rate(0.0, 1.0, 1)
    assert b.deposit(0.0, 1.0) == 0.0 and b.withdraw(0.0, 1.0) == 0.0
    assert b.unlimited and b.tokens(0.0) == math.inf


@IMPLS
def test_allotment_arguments_are_checked(impl):
    b = impl(1.0, 1, 0.0)
    for rate in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            b.set_rate(0.0, rate, 1)
    with pytest.raises(ValueError):
        b.set_rate(0.0, 1.0, -1)
    for n in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            b.deposit(0.0, n)
        with pytest.raises(ValueError):
            b.withdraw(0.0, n)
    assert (b.rate, b.capacity, b.tokens(0.0)) == (1.0, 1.0, 1.0)


allot_steps = st.lists(st.tuples(
    st.floats(0, 2, allow_nan=False),
    st.sampled_from(["take", "take", "rate", "deposit", "withdraw"]),
    st.floats(0, 5, allow_nan=False), st.integers(0, 6)), max_size=80)


@settings(max_examples=150, deadline=None)
@given(st.floats(0.1, 20), st.integers(0, 6), allot_steps)
def test_property_retuned_bucket_only_spends_what_came_in(rate, burst, script):
    """Whatever the rate changes, grants and give-backs, the tokens taken
    never exceed what the bucket started with, accrued at the rate in force
    and was deposited, minus what was withdrawn; native matches reference."""
    native, model = TokenBucket(rate, burst, 0.0), reference.TokenBucket(rate, burst, 0.0)
    now = 0.0
    income = native.capacity
    taken = 0.0
    for dt, op, x, n in script:
        income += dt * native.rate + native.rate * 1e-6  # EARLY slack per step
        now += dt
        if op == "take":
            got = native.try_take(now, 1.0)
            assert got == model.try_take(now, 1.0)
            taken += got
        elif op == "rate":
            native.set_rate(now, x, n)
            model.set_rate(now, x, n)
        elif op == "deposit":
            got = native.deposit(now, x)
            assert got == pytest.approx(model.deposit(now, x))
            assert 0.0 <= got <= x
            income += got
        else:
            got = native.withdraw(now, x)
            assert got == pytest.approx(model.withdraw(now, x))
            assert 0.0 <= got <= x
            income -= got
        level = native.tokens(now)
        assert level == pytest.approx(model.tokens(now))
        assert level <= native.capacity + 1e-9
        assert taken <= income + 1e-6
