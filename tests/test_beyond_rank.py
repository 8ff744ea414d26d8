"""Past the rank limit (#16) on a tiny BERT 32 wide: a batch of 8 sentences, 55 tokens. The last
layer's per-sentence spans certify true sentences and refuse a swapped one, a peel takes true
sentences out with their labels and refuses wrong ones, the attack refuses where it does not
apply, reports nothing certified that is not a batch sentence, and `auto` routes past the limit to
it. (Recovery rates on MiniLM are measured by recipes/benchmark_text.py, too slow for a unit test.)"""

from __future__ import annotations

import pytest
import torch

import textleak
from conftest import make_word_bert
from textleak.attacks import ATTACKS
from textleak.attacks.beyond_rank import SentencePeeler
from textleak.errors import MissingKnowledgeError
from textleak.text import leaks
from textleak.text.layouts import layout_for
from textleak.threat import Knowledge, Observation

WORDS = [f"w{i}" for i in range(160)] + "the a cat dog sat ran on mat".split()
TEXTS = [" ".join(f"w{i * 6 + j}" for j in range(4 + i % 3)) for i in range(8)]  # 55 tokens, each token once
LABELS = [0, 1, 1, 0, 1, 0, 1, 1]
#: the cheapest search: the tests check what is certified and reported, not how much is found
FAST = {"beam": 1, "trials": 8, "restarts": 1, "widen": 1, "settle": 2, "moves": ()}


def _model(root, task: str):
    """A random 3-layer BERT 32 wide over WORDS (`conftest.make_word_bert`)."""
    return make_word_bert(root, WORDS, task, layers=3, positions=24)


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    torch.set_num_threads(1)
    return _model(tmp_path_factory.mktemp("beyond-bert"), "classify")


@pytest.fixture(scope="module")
def capture(target):
    return textleak.capture_gradients(target, TEXTS, labels=LABELS, seed=1)


def _observation(capture, lengths: bool = True) -> Observation:
    seqs = capture.reference.token_ids
    know = Knowledge(batch_size=len(seqs), seq_lengths=tuple(len(s) for s in seqs) if lengths else None)
    return Observation(capture.gradients.gradients, capture.gradients.metadata, know)


def test_the_batch_is_past_the_rank_limit_and_sentence_spans_certify(target, capture):
    layout, grads = layout_for(target.model), capture.gradients.gradients
    assert sum(len(s) for s in capture.reference.token_ids) > layout.hidden_size
    assert not leaks.layer_span(layout, grads, 1).exact
    spans = leaks.sentence_spans(layout, grads, len(TEXTS), "classify")
    assert spans is not None and spans.rank == len(TEXTS) and "query" in spans.bases
    seqs = capture.reference.token_ids
    assert spans.certifies(layout, seqs) == [True] * len(seqs)
    # as the search asks: one sentence at a time, unpadded (rounds unlike the padded capture)
    assert [spans.certifies(layout, [s])[0] for s in seqs] == [True] * len(seqs)
    swapped = [s[:2] + [s[3], s[2]] + s[4:] for s in seqs]
    assert spans.certifies(layout, swapped) == [False] * len(seqs)
    assert leaks.sentence_spans(layout, grads, len(TEXTS), "mlm") is None


def test_peeling_takes_true_sentences_out_with_their_labels(target, capture):
    layout, seqs = layout_for(target.model), capture.reference.token_ids
    spans = leaks.sentence_spans(layout, capture.gradients.gradients, len(TEXTS), "classify")
    peeler = SentencePeeler(_observation(capture), layout, [len(s) for s in seqs], spans, drop=1)
    assert peeler.peel(seqs[0][:2] + [seqs[1][2]] + seqs[0][3:]) is None  # one token wrong: refused
    for i, s in enumerate(seqs):
        assert peeler.peel(s, last=i == len(seqs) - 1) is not None
    assert peeler.labels == LABELS
    assert peeler.sentence_rank == 1


def test_refuses_within_the_limit_and_for_masked_lm(target, tmp_path):
    cap = textleak.capture_gradients(target, TEXTS[:2], labels=LABELS[:2], seed=1)
    attack = ATTACKS.get("beyond_rank")()
    with pytest.raises(MissingKnowledgeError, match="within the rank limit"):
        attack.preflight(_observation(cap), target)
    mlm = _model(tmp_path / "mlm", "mlm")
    cap = textleak.capture_gradients(mlm, TEXTS, seed=1)
    with pytest.raises(MissingKnowledgeError, match="masked positions"):  # (declared: tests/test_beyond_rank_mlm.py)
        attack.preflight(_observation(cap), mlm)


def test_reports_certified_only_what_is_a_batch_sentence(target, capture):
    res = textleak.recover(gradients=capture.gradients, model=target, attack="beyond_rank",
                           reference=capture.reference, unknown=["labels"], options=FAST, progress=False)
    assert res.method == "beyond_rank" and len(res.prediction["token_ids"]) == len(TEXTS)
    truth = capture.reference.token_ids
    flags = res.details["sentence_certified"]
    assert res.details["certified_share"] == sum(flags) / len(flags)
    assert res.details["certified"] == all(flags)
    for seq, ok in zip(res.prediction["token_ids"], flags):
        assert not ok or seq in truth


def test_undeclared_lengths_get_a_note_and_the_attack_proceeds(target, capture, caplog):
    out = ATTACKS.get("beyond_rank")(**FAST).run(_observation(capture, lengths=False), target, progress=False)
    assert out.details["notes"] and "cannot be inferred" in out.details["notes"][0]
    assert out.assumed["seq_lengths"] != "known"
    assert len(out.prediction["token_ids"]) == len(TEXTS)  # the batch size read off the last layer's rank


def test_auto_runs_beyond_rank_past_the_limit(target, capture):
    options = {"steps": 1, "prior": "none", "beyond_rank": FAST, "lamp": {"prior": "none"}}
    res = textleak.recover(gradients=capture.gradients, model=target, attack="auto", reference=capture.reference,
                           unknown=["labels"], options=options, progress=False)
    tried = {t["attack"]: t["reason"] for t in res.details["tried"]}
    assert "rank gap" in tried["exact"] or "certificate" in tried["exact"]
    assert res.method.startswith("beyond_rank") or "beyond_rank" in tried


def test_settling_stops_once_the_budget_has_run_out(monkeypatch):
    import time

    from textleak.attacks.beyond_rank import SentenceSearch
    from textleak.attacks.exact import search as exact_search
    from textleak.core import budget

    from types import SimpleNamespace

    class Bare(SentenceSearch):  # past the budget settle needs no state: it returns the seeds as they are
        def __init__(self):
            self.span1 = SimpleNamespace(exact=True)  # (a span with a rank gap: no screen)

    calls = []
    monkeypatch.setattr(exact_search, "settle", lambda *a, **k: calls.append(1) or [[0]])
    assert Bare().settle([[1, 2, 3]]) == [[0]] and calls  # within the budget: exact's settling
    calls.clear()
    with budget.time_budget(1e-3):
        time.sleep(0.01)
        assert Bare().settle([[1, 2, 3]]) == [[1, 2, 3]]
    assert not calls


def test_sentence_move_puts_one_wrong_token_right_once(target, capture):
    from types import SimpleNamespace

    from textleak.attacks.beyond_rank import SentenceMove

    layout, seqs = layout_for(target.model), capture.reference.token_ids
    spans = leaks.sentence_spans(layout, capture.gradients.gradients, len(TEXTS), "classify")
    true = list(seqs[2])
    options = sorted({s[p] for s in seqs for p in range(1, len(s) - 1)})  # every body token everywhere
    search = SimpleNamespace(layout=layout, spans=spans, ends=True, free=lambda p, n=None: options,
                             residuals=lambda rows: torch.zeros(len(rows)), span1=SimpleNamespace(exact=False))
    wrong = true[:3] + [seqs[5][3]] + true[4:]
    move = SentenceMove()
    assert move(search, wrong)[0] == true
    assert move(search, wrong)[0] == wrong  # a miss is tried once
    assert SentenceMove()(SimpleNamespace(**{**vars(search), "spans": None}), wrong)[0] == wrong
    # once what is left has a layer-1 rank gap, exact's moves take over
    assert SentenceMove()(SimpleNamespace(**{**vars(search), "span1": SimpleNamespace(exact=True)}), wrong)[0] == wrong


def test_a_gap_at_the_width_is_not_settled_on(target, capture, monkeypatch):
    import textleak.attacks.beyond_rank_peel as br

    layout, seqs = layout_for(target.model), capture.reference.token_ids
    spans = leaks.sentence_spans(layout, capture.gradients.gradients, len(TEXTS), "classify")
    peeler = SentencePeeler(_observation(capture), layout, [len(s) for s in seqs], spans, drop=1)
    H = layout.hidden_size
    monkeypatch.setattr(br, "EXACT_MARGIN", 96)  # 8 of 32 directions
    for rank, exact in ((H - 4, False), (H - 8, True)):
        gapped = leaks.LayerSpan(1, torch.eye(H, dtype=torch.double)[:, :rank], torch.ones(H), rank, 1e6, 0.1)
        monkeypatch.setattr(br, "layer_span", lambda *a, **k: gapped)
        assert peeler.span1_left().exact is exact


def test_repair_round_puts_the_closest_miss_right_while_the_span_is_partial(target, capture):
    from types import SimpleNamespace

    from textleak.attacks.beyond_rank import SentenceMove, SentenceSearch

    layout, seqs = layout_for(target.model), capture.reference.token_ids
    spans = leaks.sentence_spans(layout, capture.gradients.gradients, len(TEXTS), "classify")
    options = sorted({s[p] for s in seqs for p in range(1, len(s) - 1)})
    true = list(seqs[2])
    one_off, far = true[:3] + [seqs[5][3]] + true[4:], [true[0]] + [options[0]] * (len(true) - 2) + [true[-1]]

    def search(repair: int, exact: bool = False):
        taken: list[list[int]] = []
        s = SimpleNamespace(layout=layout, spans=spans, ends=True, free=lambda p, n=None: options,
                            residuals=lambda rows: torch.zeros(len(rows)), span1=SimpleNamespace(exact=exact),
                            config=SimpleNamespace(repair=repair), missing=[len(true)], repairer=SentenceMove(),
                            near={len(true): [(0.0, far), (1.0, one_off)]}, found=[], taken=taken)
        s.take = lambda seq, res: taken.append(seq) or seq == true
        return s

    s = search(1)
    assert SentenceSearch.repair_round(s) and s.taken == [true]  # the closest by the sentence spans, not layer 1
    for off in (search(0), search(1, exact=True)):  # switched off; a span with a rank gap: exact's moves
        assert not SentenceSearch.repair_round(off) and not off.taken


def _screen_search(layout, spans, seqs, span1, **extra):
    """A search stand-in for the screen: at each position, the batch's tokens there."""
    from types import SimpleNamespace

    options = [sorted({s[p] for s in seqs if p < len(s) - 1}) for p in range(max(len(s) for s in seqs))]
    return SimpleNamespace(layout=layout, spans=spans, ends=True, free=lambda p, n=None: options[p], span1=span1,
                           **extra)


def test_the_screen_finds_a_sentence_two_tokens_off_on_the_sentence_spans(target, capture):
    from textleak.attacks.beyond_rank_screen import NeighbourScreen

    layout, grads, seqs = layout_for(target.model), capture.gradients.gradients, capture.reference.token_ids
    spans = leaks.sentence_spans(layout, grads, len(TEXTS), "classify")
    span1 = leaks.partial_span([grads[n] for n in layout.qkv_names(1)], 1, 1)
    search = _screen_search(layout, spans, seqs, span1)
    true = list(seqs[2])
    two_off = true[:2] + [seqs[5][2], seqs[6][3]] + true[4:]
    assert NeighbourScreen(top=1000, pairs=1000)(search, [two_off]) == [true]  # every pair among every candidate
    screen = NeighbourScreen(top=1000, pairs=1000)
    assert screen(search, [true[:1] + seqs[7][1:4] + true[4:]]) == []  # three off: out of reach
    assert screen(search, [true]) == [true] and screen(search, [true]) == []  # each sentence screened once
    assert NeighbourScreen(longest=len(true) - 1)(search, [true]) == []  # longer than `longest`: not screened
    assert NeighbourScreen()(_screen_search(layout, None, seqs, span1), [true]) == []  # no sentence spans
    # the candidates tried per position are the best by layer-1 residual in the sentence's own context
    best = NeighbourScreen(top=2).best_changes(search, true)
    assert len(best) == len(true) - 2
    assert all(len(b) == min(2, len(search.free(p + 1)) - 1) and true[p + 1] not in b for p, b in enumerate(best))


def test_the_screen_round_hands_what_passes_to_the_search_while_the_span_is_partial(target, capture):
    from types import SimpleNamespace

    from textleak.attacks.beyond_rank import SentenceSearch
    from textleak.attacks.beyond_rank_screen import NeighbourScreen

    layout, grads, seqs = layout_for(target.model), capture.gradients.gradients, capture.reference.token_ids
    spans = leaks.sentence_spans(layout, grads, len(TEXTS), "classify")
    true = list(seqs[2])
    one_off = true[:3] + [seqs[5][3]] + true[4:]
    for span1, expect in ((leaks.partial_span([grads[n] for n in layout.qkv_names(1)], 1, 1), [true]),
                          (SimpleNamespace(exact=True), [])):
        taken: list[list[int]] = []
        s = _screen_search(layout, spans, seqs, span1, missing=[len(true)], found=[], screened=False,
                           screen=NeighbourScreen(top=1000), residuals=lambda rows: torch.zeros(len(rows)))
        s.far = lambda: not s.span1.exact  # (far past the limit while the span is partial)
        s.take = lambda seq, res: taken.append(seq) or True
        SentenceSearch.screen_round(s, [one_off])
        assert taken == expect and s.screened == bool(expect)


def test_a_search_that_stops_just_after_a_peel_reports_its_earlier_misses(target, capture):
    from types import SimpleNamespace

    from textleak.attacks.exact.search import Search

    layout, grads, seqs = layout_for(target.model), capture.gradients.gradients, capture.reference.token_ids
    span1 = leaks.partial_span([grads[n] for n in layout.qkv_names(1)], 1, 1)
    n, best, other = len(seqs[2]), list(seqs[2]), list(seqs[2][:3] + [seqs[5][3]] + seqs[2][4:])
    s = SimpleNamespace(span1=span1, full_span=span1, layout=layout, cands=SimpleNamespace(narrow=lambda *a: None),
                        missing=[n], lengths=[n], found=[], near={n: [(0.5, other), (0.1, best)]}, earlier={})
    Search.narrow(s, SimpleNamespace(span1=span1))  # a peel: the misses were measured against the old span
    assert s.near == {} and s.earlier == {n: [best, other]}
    assert Search.result(s)[0] == [best]  # not each position's first candidate
    s.near = {n: [(0.2, other)]}  # misses read after the peel come first
    assert Search.result(s)[0] == [other]


def test_far_past_the_limit_rounds_after_the_first_seed_only_the_lengths_the_screen_takes():
    from types import SimpleNamespace

    from textleak.attacks.beyond_rank import SentenceSearch

    def lengths(**change):
        s = dict(missing=[4, 20, 6], rounds=2, progressed=True, span1=SimpleNamespace(exact=False),
                 layout=SimpleNamespace(hidden_size=8), config=SimpleNamespace(screen=6))
        search = SimpleNamespace(**{**s, **change})
        search.far = lambda: SentenceSearch.far(search)
        return SentenceSearch.seeded_lengths(search)

    assert lengths() == {4, 6}  # 30 tokens left, more than 1.5 x 8
    everything = {4, 6, 20}
    assert lengths(rounds=1) == everything  # the first round gives every length a guess
    assert lengths(progressed=False) == everything  # after a round that found nothing
    assert lengths(span1=SimpleNamespace(exact=True)) == everything  # a span with a rank gap: exact's search
    assert lengths(layout=SimpleNamespace(hidden_size=32)) == everything  # within 1.5 x the width
    assert lengths(config=SimpleNamespace(screen=0)) == everything  # the screen off


def _finished_run(target, capture, monkeypatch, take_first: bool, finish: float):
    """beyond_rank with a search that finds nothing (or, `take_first`, the first sentence of the batch
    in its first round, which certifies and peels it), then the finish (`beyond_rank_finish`) with its tail
    exchanges (`targets` off: the descent onto pooled states may put a token where its column has no copy left)."""
    from textleak.attacks.beyond_rank import SentenceSearch

    truth = [list(s) for s in capture.reference.token_ids]

    def seed_round(self, widen):
        if take_first and not self.found:
            return self.take(truth[0], float(self.residuals([truth[0]])[0]))
        return False

    monkeypatch.setattr(SentenceSearch, "seed_round", seed_round)
    out = ATTACKS.get("beyond_rank")(**FAST, prior="none", finish=finish, targets=False).run(_observation(capture), target,
                                                                               progress=False)
    return truth, out


def _content(seqs, skip=()):
    from collections import Counter

    return Counter(t for i, s in enumerate(seqs) if i not in skip for t in s[1:-1])


def test_far_past_the_limit_what_the_search_leaves_is_assembled_from_the_columns(target, capture, monkeypatch):
    from textleak.core import budget

    with budget.time_budget(3600):
        truth, out = _finished_run(target, capture, monkeypatch, take_first=False, finish=0.1)
    got = out.prediction["token_ids"]
    assert out.details["finish"]["sentences"] == len(TEXTS)  # 55 tokens: more than 1.5 x 32
    left = out.details["finish"]["left"]  # the budget's seconds left as the finish began and ended
    assert 0 < left[1] <= left[0] <= 3600  # (one decimal: a fast run rounds to 3600.0)
    assert sorted(map(len, got)) == sorted(map(len, truth))
    # every token stands once in this batch: the columns hold each once, and so does the batch assembled
    assert _content(got) == _content(truth)
    _, off = _finished_run(target, capture, monkeypatch, take_first=False, finish=0.0)
    assert off.details["finish"] is None and _content(off.prediction["token_ids"]) != _content(truth)


def test_the_finish_reads_what_the_peels_left(target, capture, monkeypatch):
    truth, out = _finished_run(target, capture, monkeypatch, take_first=True, finish=0.1)
    got = out.prediction["token_ids"]
    assert out.details["peeled"] == 1 and out.details["finish"]["sentences"] == len(TEXTS) - 1
    first = got.index(truth[0])  # certified, in its slot, and its tokens out of the columns
    assert out.details["sentence_certified"][first]
    assert _content(got, skip={first}) == _content(truth, skip={0})


def test_the_finish_applies_only_far_past_the_limit_with_declared_lengths(target):
    from types import SimpleNamespace

    attack = ATTACKS.get("beyond_rank")()
    obs = SimpleNamespace(task="classify", knowledge=SimpleNamespace(seq_lengths=(30, 30)))
    layout = SimpleNamespace(hidden_size=32)
    assert attack._finisher(obs, layout, [30, 30], target.tokenizer) is not None  # 60 > 48
    assert attack._finisher(obs, layout, [20, 20], target.tokenizer) is None  # 40: the search takes it all
    assert attack._finisher(SimpleNamespace(task="mlm", knowledge=obs.knowledge), layout, [30, 30],
                            target.tokenizer) is None
    assert ATTACKS.get("beyond_rank")(finish=0)._finisher(obs, layout, [30, 30], target.tokenizer) is None


def test_first_inversion_hands_short_sentences_to_the_search_before_it_runs(target, capture, monkeypatch):
    """`first`: the states read and the short lengths inverted before the search; what the inversion brings
    back is taken by the search's certificates (peeled), so it comes out found and certified."""
    from textleak.attacks.exact.search import Search

    monkeypatch.setattr(Search, "run", lambda self: self.result())  # the search itself finds nothing
    truth = capture.reference.token_ids
    obs = _observation(capture)
    opts = dict(FAST, targets=True, invert=max(map(len, truth)), finish=0.0)
    out = ATTACKS.get("beyond_rank")(**opts, first=True).run(obs, target, progress=False)
    first = out.details["first"]
    assert first["states"] == len(TEXTS) and first["taken"] >= 2 and out.details["peeled"] == first["taken"]
    flags, got = out.details["sentence_certified"], out.prediction["token_ids"]
    assert sum(flags) == first["taken"] and all(s in truth for s, ok in zip(got, flags) if ok)
    off = ATTACKS.get("beyond_rank")(**opts).run(obs, target, progress=False)
    assert "first" not in off.details and off.details["peeled"] == 0
