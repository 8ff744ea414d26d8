"""`exact-update` at batch > 1 hands the tokens at each shared position to the sentences standing there by the
most probable links between neighbours (`attacks.update_slots`): exact per pair of neighbouring positions."""

from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import pytest
import torch

from textleak.attacks.update_batch_positions import ranked_start
from textleak.attacks.update_slots import assign_slots, assigned, row_links, slot_starts
from textleak.text.layouts import layout_for

CLS, SEP = 100, 101


def _score(seqs, link):
    return sum(link(a, b) for s in seqs for a, b in zip(s[1:-1], s[2:]))


def test_the_assignment_is_the_most_probable_over_every_permutation_at_every_position():
    rnd = random.Random(1)
    for _ in range(60):
        lengths = [rnd.randint(3, 6) for _ in range(rnd.randint(2, 3))]
        seqs = [[CLS] + [rnd.randint(0, 5) for _ in range(n - 2)] + [SEP] for n in lengths]
        table = {(v, w): -5 * rnd.random() for v in range(102) for w in range(102)}
        positions = [(p, [b for b in range(len(seqs)) if p < lengths[b] - 1]) for p in range(1, max(lengths) - 1)]
        best = None
        for perms in itertools.product(*[list(itertools.permutations(S)) for _, S in positions]):
            trial = [list(s) for s in seqs]
            for (p, S), perm in zip(positions, perms):
                for b, src in zip(S, perm):
                    trial[b][p] = seqs[src][p]
            best = max(best if best is not None else -1e9, _score(trial, lambda v, w: table[v, w]))
        got = assign_slots(seqs, lambda v, w: table[v, w], SEP)
        assert [len(s) for s in got] == lengths and [s[0] for s in got] == [CLS] * len(got)
        for p, S in positions:  # each position keeps its tokens
            assert sorted(got[b][p] for b in S) == sorted(seqs[b][p] for b in S)
        assert abs(_score(got, lambda v, w: table[v, w]) - best) < 1e-9


def test_links_follow_the_word_rows_where_the_prior_is_flat():
    # two sentences 1 2 3 and 4 5 (the fill crossed them); word rows alike within each sentence
    rows = {t: torch.nn.functional.normalize(torch.tensor(v, dtype=torch.double), dim=0)
            for t, v in {1: [1, 0.1], 2: [1, 0.2], 3: [1, 0.0], 4: [0.1, 1], 5: [0.0, 1]}.items()}
    filled = [[CLS, 4, 2, 3, SEP], [CLS, 1, 5, SEP]]
    assert assign_slots(filled, row_links(rows, None, SEP, 1.0), SEP) == [[CLS, 1, 2, 3, SEP], [CLS, 4, 5, SEP]]
    assert assign_slots(filled, row_links(rows, None, SEP, 0.0), SEP) == filled  # no signal: the fill stays
    made = assigned(rows, None, SEP, (0.0, 1.0))(filled)
    assert made == {"assigned_0": filled, "assigned_1": [[CLS, 1, 2, 3, SEP], [CLS, 4, 5, SEP]]}


class _NeighbourBox:
    """A sentence's "gradient": its neighbours' products summed (a sum over positions would not see which
    sentence holds which token); the misfit: the distance to `target`."""

    cover = None
    layout = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(num_labels=2)))

    def gradient(self, seq, label):
        return torch.tensor([float(sum(a * b for a, b in zip(seq, seq[1:])))], dtype=torch.double)

    def misfit(self, G):
        return float((G - self.target).abs().sum())


def test_an_assigned_batch_replaces_the_search_guess_and_the_fill_at_the_least_box_misfit():
    box = _NeighbourBox()
    truth = [[CLS, 1, 2, 3, SEP], [CLS, 4, 5, SEP]]
    box.target = sum(box.gradient(s, 0) for s in truth) / 2
    order = [[CLS], [1, 4, SEP], [5, 2], [3]]  # [SEP] ranks high where a sentence ends: never an inner token
    pred = {"token_ids": [[CLS, 9, 9, 9, SEP], [CLS, 9, 9, SEP]], "labels": [0, 0]}
    swapped = [[CLS, 1, 2, 3, SEP], [CLS, 4, 5, SEP]]
    weighed = {}
    report = ranked_start(box, pred, order, {CLS, SEP}, lambda filled: {"swapped": swapped}, batches_out=weighed)
    assert report["kept"] == "swapped" and pred["token_ids"] == truth and report["swapped"][0] == 0.0
    assert report["filled"][0] > 0
    assert set(weighed) == {"search", "filled", "swapped"} and weighed["swapped"] == (swapped, [0, 0], 0.0)
    pred = {"token_ids": [[CLS, 9, 9, 9, SEP], [CLS, 9, 9, SEP]], "labels": [0, 0]}
    report = ranked_start(box, pred, order, {CLS, SEP})
    assert pred["token_ids"] == [[CLS, 1, 5, 3, SEP], [CLS, 4, 2, SEP]]  # the fill, [SEP] kept out


def test_slot_starts_only_with_the_option_and_without_a_prior_from_the_rows_alone(monkeypatch, tmp_path):
    tok = SimpleNamespace(cls_token_id=CLS, sep_token_id=SEP)
    assert slot_starts(None, tok, False) == (set(), None)
    import textleak.attacks.update_slots as slots
    from textleak.errors import InputError

    def no_prior(name, tokenizer):
        raise InputError("no training sentences")
    monkeypatch.setattr(slots, "load_prior", no_prior)
    special, make = slot_starts(SimpleNamespace(rows=None), tok, True)
    batch = [[CLS, 1, SEP], [CLS, 2, SEP]]
    assert special == {CLS, SEP} and make(batch)["assigned_0"] == batch


def test_with_slots_first_the_repairs_run_before_the_search_and_a_certified_batch_ends_the_run(tmp_path,
                                                                                               monkeypatch):
    import textleak
    from conftest import make_wide_classifier
    from textleak.attacks.exact.search import Search
    from textleak.attacks.update import UpdateExact

    wide = make_wide_classifier(tmp_path / "wide")
    texts = ["the dog sat on the mat", "a bird sang", "the film was good"]
    cap = textleak.capture_gradients(wide, texts, labels=[1, 0, 1], defence="fedavg:4,1e-5")  # wide rounding
    truth = [list(s) for s in cap.reference.token_ids]
    seen = []

    def repair(self, observation, target, moved, facts, out, near):  # the repairs reach the truth
        seen.append([list(s) for s in out.prediction["token_ids"]])
        out.prediction["token_ids"] = truth
        self._certify(observation, layout_for(target.model), facts, out)

    def no_search(self):
        raise AssertionError("the search ran")
    monkeypatch.setattr(UpdateExact, "_repair", repair)
    monkeypatch.setattr(Search, "run", no_search)
    res = textleak.recover(gradients=cap.gradients, model=wide, attack="exact-update", reference=cap.reference,
                           unknown=["labels"], progress=False)  # on by default
    assert res.details["slots_first"] and res.details["certified"] and res.prediction["token_ids"] == truth
    assert [len(s) for s in seen[0]] == [len(s) for s in truth]  # from a blank batch of the declared lengths
    with pytest.raises(AssertionError, match="the search ran"):  # off: the search first
        textleak.recover(gradients=cap.gradients, model=wide, attack="exact-update", reference=cap.reference,
                         unknown=["labels"], options={"slots_first": False}, progress=False)


def test_the_batch_slots_first_left_competes_in_the_ranked_start_when_carried():
    from textleak.attacks.update_small_lr import _carrying

    box = _NeighbourBox()
    truth = [[CLS, 1, 2, 3, SEP], [CLS, 4, 5, SEP]]
    box.target = sum(box.gradient(s, 0) for s in truth) / 2
    order = [[CLS], [1, 4], [5, 2], [3]]
    pred = {"token_ids": [[CLS, 9, 9, 9, SEP], [CLS, 9, 9, SEP]], "labels": [0, 0]}
    crossed = [[CLS, 4, 2, 3, SEP], [CLS, 1, 5, SEP]]
    report = ranked_start(box, pred, order, {CLS, SEP}, _carrying(lambda filled: {"crossed": crossed}, truth))
    assert report["kept"] == "carried" and pred["token_ids"] == truth and "crossed" in report
    pred = {"token_ids": [[CLS, 9, 9, 9, SEP], [CLS, 9, 9, SEP]], "labels": [0, 0]}
    assert ranked_start(box, pred, order, {CLS, SEP}, _carrying(None, truth))["kept"] == "carried"


def test_first_share_sets_the_share_of_the_budget_the_repairs_before_the_search_get(tmp_path, monkeypatch):
    import textleak
    from conftest import make_wide_classifier
    from textleak.attacks.update import UpdateExact
    from textleak.core import budget

    wide = make_wide_classifier(tmp_path / "wide")
    texts = ["the dog sat on the mat", "a bird sang", "the film was good"]
    cap = textleak.capture_gradients(wide, texts, labels=[1, 0, 1], defence="fedavg:4,1e-5")  # wide rounding
    truth = [list(s) for s in cap.reference.token_ids]
    seen = []

    def repair(self, observation, target, moved, facts, out, near):  # what the first pass may spend; then the truth
        seen.append(budget.current().remaining())
        out.prediction["token_ids"] = truth
        self._certify(observation, layout_for(target.model), facts, out)
    monkeypatch.setattr(UpdateExact, "_repair", repair)
    for options in ({}, {"first_share": 0.5}):
        with budget.time_budget(1000.0):
            res = textleak.recover(gradients=cap.gradients, model=wide, attack="exact-update",
                                   reference=cap.reference, unknown=["labels"], options=options, progress=False)
        assert res.details["slots_first"] and res.details["certified"]
    assert seen[0] > 900 and 400 < seen[1] <= 500  # the default: the whole budget; 0.5: half
