"""Time budgets nest and report running out; device choices resolve or fail in one line."""

import time

import pytest
import torch

from textleak.core.budget import Budget, current, expired, time_budget
from textleak.core.device import resolve_device
from textleak.errors import InputError


def test_budgets_nest_and_the_inner_sees_the_outer_deadline():
    assert not expired()
    with time_budget(0.05) as outer:
        with time_budget(100) as inner:
            assert current() is inner and inner.remaining() <= 0.05
            time.sleep(0.06)
            assert expired() and inner.ran_out and outer.ran_out
            assert inner.describe()["seconds"] == pytest.approx(0.05, abs=0.01)
    assert current() is not inner


def test_no_limit_never_expires_and_bad_limits_are_refused():
    with time_budget(None) as b:
        assert not b.expired() and b.describe()["seconds"] is None
    for bad in (0, -1, float("nan"), float("inf"), "10"):
        with pytest.raises(InputError):
            Budget(bad)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="bad device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_a_share_of_a_spent_budget_is_a_token_budget_not_an_error():
    from textleak.core.budget import share_of_remaining

    assert share_of_remaining(0.5) is None  # no enclosing limit
    with time_budget(0.01):
        time.sleep(0.02)
        seconds = share_of_remaining(0.5)  # the audit's share was spent before this stage began
        assert seconds is not None and seconds > 0
        with time_budget(seconds):
            time.sleep(0.002)
            assert expired()
    with time_budget(100.0):
        assert 40 < share_of_remaining(0.5) <= 50 and share_of_remaining(1.0) is None
