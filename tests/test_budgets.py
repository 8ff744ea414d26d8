"""Time budgets: the matching loop stops at the deadline with its best so far (and resumes from
the cut), recover() and the CLI record the budget, the audit's pacer shares time and shows an ETA,
utility training stops and is not cached."""

from __future__ import annotations

import json
import time

import pytest

import textleak
from textleak.core import MatchConfig, match
from textleak.core.budget import time_budget
from textleak.errors import InputError
from textleak.pacing import Pacer, clock, fixed_share
from textleak.text.models import load_text_model

from test_core_matching import _problem
from _defences_tiny import make_tiny_bert, write_tsv


class Slow:
    """A problem whose every gradient evaluation takes `delay` seconds."""

    def __init__(self, inner, delay):
        self.inner, self.delay, self.names = inner, delay, inner.names

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def gradients(self, v):
        time.sleep(self.delay)
        return self.inner.gradients(v)


def test_match_stops_at_the_deadline_with_its_best_and_resumes_from_the_cut(tmp_path):
    x, p = _problem()
    done = match(p, p.observed, MatchConfig(optimizer="adam", steps=3), progress=False)  # also warms torch up
    assert done.extra == {}  # no budget: nothing recorded
    slow = Slow(p, 0.01)
    cfg = MatchConfig(optimizer="adam", steps=100000, restarts=3, lr=0.05, checkpoint_every=0)
    ckpt = tmp_path / "run.ckpt"
    t0 = time.perf_counter()
    with time_budget(0.5):
        out = match(slow, p.observed, cfg, progress=False, checkpoint=ckpt)
    assert time.perf_counter() - t0 < 3
    cut = out.extra["budget"]
    assert cut["ran_out"] and cut["stopped_at"]["restart"] == 0 and 0 < cut["stopped_at"]["step"] < 100000
    assert len(out.history) == 1 and out.history[0][-1] < out.history[0][0]  # one restart, improving
    assert ckpt.exists()  # the cut is resumable
    with time_budget(0.3):
        again = match(slow, p.observed, cfg, progress=False, checkpoint=ckpt, resume=True)
    assert again.resumed and len(again.history[0]) > len(out.history[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = make_tiny_bert(tmp_path_factory.mktemp("tiny"))
    return folder, write_tsv(folder / "data.tsv")


def test_recover_records_the_budget_and_returns_a_guess_when_it_runs_out(tiny, one_thread):
    folder, _ = tiny
    target = load_text_model(str(folder), task="classify")
    cap = textleak.capture_gradients(target, ["the acting is superb ."], labels=[1])
    t0 = time.perf_counter()
    res = textleak.recover(gradients=cap.gradients, model=target, attack="dlg", reference=cap.reference,
                           options={"steps": 100000}, progress=False, budget=1.0)
    assert time.perf_counter() - t0 < 15
    assert res.details["budget"]["ran_out"] and res.details["budget"]["seconds"] == pytest.approx(1.0, abs=0.05)
    assert res.details["certified"] is False and len(res.texts) == 1 and res.metrics is not None
    free = textleak.recover(gradients=cap.gradients, model=target, attack="dlg", options={"steps": 1}, progress=False)
    assert free.details["budget"] == {"seconds": None, "used": pytest.approx(free.details["budget"]["used"]),
                                      "ran_out": False}
    with pytest.raises(InputError, match="positive number of seconds"):
        textleak.recover(gradients=cap.gradients, model=target, attack="dlg", budget=0)


def test_cli_recover_budget(tiny, tmp_path, capsys):
    from textleak.cli import main

    folder, _ = tiny
    grads = tmp_path / "g.pt"
    assert main(["capture", "--model", str(folder), "--task", "classify", "--text", "dull and far too long .",
                 "--labels", "0", "--out", str(grads)]) == 0
    assert main(["recover", "--grads", str(grads), "--attack", "dlg", "--steps", "100000", "--budget", "0.5",
                 "--quiet", "--out", str(tmp_path / "r.json")]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["details"]["budget"]["ran_out"] is True
    capsys.readouterr()
    assert main(["recover", "--grads", str(grads), "--budget", "-3"]) == 2
    assert capsys.readouterr().err.startswith("textleak: error: a time budget must be a positive number")


def test_pacer_shares_the_time_left_and_tells_an_eta():
    now = [0.0]
    said: list[str] = []
    pacer = Pacer(total=100, per_unit=30, units=4, say=said.append, now=lambda: now[0])
    assert pacer.share() == 25  # 100 s over 4 units
    now[0] = 10  # the first unit took 10 s
    pacer.say("[0/1] 1/4 a")
    assert pacer.share() == 20  # 90 s over 3 units, less the 10 s the quickest unit took
    assert said[-1] == "[0/1] 1/4 a  elapsed 0:10  ETA 0:30"
    now[0] = 99.99
    assert pacer.share() == 0.1  # past the deadline a unit still gets a moment for a first guess
    pacer.say("[0/1] 2/4 b")  # past the deadline: each unit left still costs what the quickest took
    assert said[-1].endswith("elapsed 1:40  ETA 0:20")
    assert Pacer(total=None, per_unit=None, units=3, say=None).share() is None
    assert Pacer(total=None, per_unit=5, units=3, say=None).share() == 5
    assert clock(3725) == "1:02:05" and clock(65) == "1:05"
    with pytest.raises(InputError, match="per-unit budget"):
        Pacer(total=10, per_unit=-1, units=1)

    def unit():
        time.sleep(0.15)
        from textleak.core.budget import expired

        return {"late": expired()}
    assert fixed_share(unit, 0.01)()["budget"]["seconds"] == pytest.approx(0.01)
    rec = Pacer(total=0.02, per_unit=None, units=1, say=None).runner(unit)()
    assert rec["late"] and rec["budget"]["ran_out"]

    def utility(spec, unit_, ctx):
        time.sleep(0.15)
        from textleak.core.budget import expired

        return {"late": expired()}
    rec = Pacer(total=0.02, per_unit=None, units=1, say=None).runner(utility)(None, {"kind": "utility"}, None)
    assert not rec["late"] and rec["budget"]["seconds"] is None  # accuracy runs are never cut by the clock


def test_utility_training_stops_at_the_budget_and_is_not_cached(tiny, tmp_path, one_thread):
    from textleak.utility import UtilityConfig, measure_utility

    folder, data = tiny
    config = UtilityConfig(train=str(data), n_train=4, n_test=2, batch_size=1, epochs=50, model=str(folder))
    with time_budget(0.5):
        cut = measure_utility("none", config, cache_dir=tmp_path)
    assert cut["budget"]["ran_out"] and cut["steps"] < cut["planned_steps"] == 200
    assert not list(tmp_path.glob("utility-*.json"))
    full = measure_utility("none", UtilityConfig(**{**config.__dict__, "epochs": 1}), cache_dir=tmp_path)
    assert not full["budget"]["ran_out"] and full["steps"] == 4 and list(tmp_path.glob("utility-*.json"))


def test_audit_budget_prints_eta_and_records_each_units_budget(tiny, tmp_path, capsys):
    from textleak.cli import main

    folder, data = tiny
    out = tmp_path / "audit"
    assert main(["audit", "--model", str(folder), "--data", str(data), "--defence", "noise:1e-2", "--attack", "dlg",
                 "--n", "2", "--steps", "100000", "--no-utility", "--budget", "4", "--unit-budget", "1.5",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "budget: 0:04 in all, at most 0:02 per unit" in printed
    assert "ETA" in printed and "elapsed" in printed and "attacks and utility runs took" in printed
    units = json.loads((out / "results" / "table.json").read_text())["units"]
    assert len(units) == 4 and all(u["budget"]["ran_out"] and u["budget"]["seconds"] <= 1.5 for u in units)


def test_a_cpu_clock_budget_counts_work_not_waiting(monkeypatch):
    """TEXTLEAK_BUDGET_CLOCK=cpu: a process that sleeps spends no budget; one that computes does."""
    import time as _time

    from textleak.core.budget import time_budget

    monkeypatch.setenv("TEXTLEAK_BUDGET_CLOCK", "cpu")
    with time_budget(0.05) as b:
        _time.sleep(0.2)
        assert not b.expired()
        end = _time.process_time() + 0.2
        while _time.process_time() < end:
            pass
        assert b.expired()
    assert b.describe()["clock"] == "cpu"
    monkeypatch.setenv("TEXTLEAK_BUDGET_CLOCK", "wall")
    with time_budget(0.05) as b:
        _time.sleep(0.1)
        assert b.expired()
    assert "clock" not in b.describe()


def test_an_unknown_budget_clock_is_refused(monkeypatch):
    from textleak.core.budget import time_budget
    from textleak.errors import InputError

    monkeypatch.setenv("TEXTLEAK_BUDGET_CLOCK", "gpu")
    with pytest.raises(InputError, match="TEXTLEAK_BUDGET_CLOCK"):
        with time_budget(1):
            pass
