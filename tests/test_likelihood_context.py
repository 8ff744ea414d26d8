"""The masked-LM candidate source of the `likelihood` search (`text.masked_prior`,
`attacks.evidence.ContextCandidates`), on a tiny model with a tiny head (no minutes of training)."""

from __future__ import annotations

import pytest
import torch

from conftest import make_wide_classifier
from textleak.text.layouts import layout_for


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """A random 2-layer BERT classifier 128 wide (`conftest.make_wide_classifier`)."""
    return make_wide_classifier(tmp_path_factory.mktemp("wide-bert-context"))


def _corpus(tok, n: int = 240) -> list[list[int]]:
    """'the X sat on the Y .' sentences: 'on' always follows 'sat'."""
    gen = torch.Generator().manual_seed(1)
    pets, things = ["cat", "dog", "bird"], ["mat", "log"]
    out = []
    for _ in range(n):
        a, b = int(torch.randint(3, (1,), generator=gen)), int(torch.randint(2, (1,), generator=gen))
        out.append(tok(f"the {pets[a]} sat on the {things[b]} .")["input_ids"])
    return out


def test_a_fitted_head_reads_a_masked_token_from_its_context(wide):
    """Trained on span-masked sentences over the frozen encoder, the head puts 'on' first where it
    is masked after 'sat'; the untrained head does not."""
    from textleak.text.masked_prior import ContextHead

    tok = wide.tokenizer
    head = ContextHead(layout_for(wide.model), tok.mask_token_id, {})
    seq = tok("the dog sat on the log .")["input_ids"]
    on = tok.convert_tokens_to_ids("on")
    before = head.log_probs(seq, [[4]])[0][0]
    stats = head.fit(_corpus(tok), epochs=40)
    after = head.log_probs(seq, [[4]])[0][0]
    assert int(before.argmax()) != on and int(after.argmax()) == on
    assert stats["examples"] > 200
    both = head.log_probs(seq, [[3, 4], [4]])  # groups masked together, one pass
    assert [tuple(lp.shape) for lp in both] == [(2, after.shape[0]), (1, after.shape[0])]


def test_the_head_is_fitted_on_the_training_files_once_and_cached(wide, tmp_path, monkeypatch):
    """`load_context_head` fits on $TEXTLEAK_PRIOR_DATA, saves under $TEXTLEAK_CACHE, and a fresh
    process reads the same head back instead of fitting again."""
    from textleak.text import masked_prior as mp

    rows = ["sentence\tlabel"] + [f"the {p} sat on the {t} .\t1" for p in ("cat", "dog") for t in ("mat", "log")] * 10
    (tmp_path / "train_x.tsv").write_text("\n".join(rows) + "\n")
    monkeypatch.setenv("TEXTLEAK_PRIOR_DATA", str(tmp_path / "train_*.tsv"))
    monkeypatch.setenv("TEXTLEAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mp, "_HEADS", {})
    first = mp.load_context_head(wide)
    assert len(list((tmp_path / "cache").glob("context-head-*.pt"))) == 1
    monkeypatch.setattr(mp, "_HEADS", {})
    monkeypatch.setattr(mp.ContextHead, "fit", lambda *a, **k: pytest.fail("fitted again"))
    second = mp.load_context_head(wide)
    assert all(torch.equal(first.state()[k], second.state()[k]) for k in first.state())


def test_no_training_sentences_is_a_one_line_input_error(wide, tmp_path, monkeypatch):
    """With no training sentence to fit on, the head is refused with a line that says what to set,
    not an error from deep inside the fit."""
    from textleak.errors import InputError
    from textleak.text import masked_prior as mp

    (tmp_path / "train_x.tsv").write_text("sentence\tlabel\ntoo short\t1\n")
    monkeypatch.setenv("TEXTLEAK_PRIOR_DATA", str(tmp_path / "train_*.tsv"))
    monkeypatch.setenv("TEXTLEAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mp, "_HEADS", {})
    with pytest.raises(InputError, match="TEXTLEAK_PRIOR_DATA"):
        mp.load_context_head(wide)
    assert not (tmp_path / "cache").exists()


def test_the_sum_of_weak_sources_ranks_a_token_no_single_source_ranks_first():
    """log p + z(matched) + z(rows)/2: token 5 is second by each source, first by their sum."""
    from textleak.attacks.evidence import context_candidates

    banned = torch.zeros(8, dtype=torch.bool)
    banned[0] = True
    logp = torch.log_softmax(torch.tensor([9.0, 3.0, 0.0, 0.0, 0.0, 2.5, 0.0, 0.0]), 0)
    matched = torch.tensor([0.0, 0.0, 3.0, 0.0, 0.0, 2.5, 0.0, 0.0])
    rows = torch.tensor([0.0, 0.0, 0.0, 3.0, 0.0, 2.5, 0.0, 0.0])
    assert [int(s.masked_fill(banned, -1e9).argmax()) for s in (logp, matched, rows)] == [1, 2, 3]
    assert context_candidates(logp, matched, rows, banned, 2)[0] == 5


class _Peaked:
    """A head whose masked positions all favour given tokens (the wiring under test, not the LM)."""

    def __init__(self, favour: dict[int, int], V: int):
        self.favour, self.V, self.calls = favour, V, []

    def log_probs(self, seq, groups):
        self.calls.append([list(g) for g in groups])
        out = []
        for g in groups:
            lp = torch.full((len(g), self.V), -20.0)
            for r, p in enumerate(g):
                lp[r, self.favour.get(p, 0)] = 0.0
            out.append(lp)
        return out


def test_a_stretch_rebuild_takes_the_truth_from_the_context_source_alone(wide):
    """Two neighbouring wrong tokens, neither rows, matched filter nor prior holding the truth: the
    rebuild puts it back with a context source (each slot masked with the rest of its stretch) and
    not without one."""
    from textleak.attacks.evidence import ContextCandidates
    from textleak.attacks.likelihood_moves import StretchRebuild
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    word = layout.word_embedding_name
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    truth, guess = [2, 11, 12, 13, 14, 15, 16, 3], [2, 11, 12, 20, 21, 15, 16, 3]
    g = _Guess(_Batch(layout, _gradient(layout, truth, 1, names), [guess], [1]), 0)
    V = layout.word_embeddings.num_embeddings
    banned = torch.zeros(V, dtype=torch.bool)
    banned[:5] = True
    evidence = [[t] for t in guess]  # rows that hold only the guess
    head = _Peaked({3: 13, 4: 14}, V)
    rows = torch.zeros(V, len(truth))
    plain = StretchRebuild(width=2, matched=0)
    assert all(plain(g, range(1, 7), word, banned, evidence, None, [9]) is None for _ in range(5))
    found = None
    rebuild = StretchRebuild(width=2, matched=0, context=ContextCandidates(head, rows, banned, 1))
    for _ in range(5):
        found = rebuild(g, range(1, 7), word, banned, evidence, None, [9])
        if found is not None:
            break
    assert found is not None and found[0] == truth
    assert [[3, 4]] in head.calls and [[4]] in head.calls  # the slot and the rest of the stretch masked


def test_a_sweep_tries_the_context_candidates_unscreened(wide):
    """A sweep with a context source puts in the token it names where no other part of the pool
    holds it; without one the position stays."""
    from textleak.attacks.evidence import ContextCandidates
    from textleak.attacks.likelihood import LikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    word = layout.word_embedding_name
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    truth, guess = [2, 11, 12, 13, 14, 15, 16, 3], [2, 11, 12, 20, 14, 15, 16, 3]
    batch = _Batch(layout, _gradient(layout, truth, 1, names), [guess], [1])
    g = _Guess(batch, 0)
    V = layout.word_embeddings.num_embeddings
    banned = torch.zeros(V, dtype=torch.bool)
    banned[:5] = True
    evidence = [[t] for t in guess]
    search = LikelihoodSearch(flips=0, neighbours=0, matched=0, screen=1, rows=1, keep_sure=False, weighted=False)
    search._begin()
    search._prior = None
    assert search._sweep(batch, g, range(3, 4), evidence, banned, word, 1) == 0 and g.x == guess
    g = _Guess(batch, 0)
    search._begin()
    search._context = ContextCandidates(_Peaked({3: 13}, V), torch.zeros(V, len(truth)), banned, 1)
    assert search._sweep(batch, g, range(3, 4), evidence, banned, word, 1) == 1 and g.x == truth


class _Ranked(_Peaked):
    """A head whose masked positions favour given tokens in order (log p 0, -10, ...; the rest -40)."""

    def log_probs(self, seq, groups):
        out = []
        for g in groups:
            lp = torch.full((len(g), self.V), -40.0)
            for r, p in enumerate(g):
                for k, t in enumerate(self.favour.get(p, [])):
                    lp[r, t] = -10.0 * k
            out.append(lp)
        return out


def test_a_sweep_of_every_candidate_tries_the_deeper_context_list(wide):
    """`deep`: the J_w climb's sweep of every candidate (`screen` 0) takes the true token the context
    source ranks second, where its `context` list (1) holds only a decoy; the screened sweeps and the J
    climb keep `context`."""
    from textleak.attacks.evidence import ContextCandidates
    from textleak.attacks.likelihood import LikelihoodSearch
    from textleak.attacks.likelihood_state import _Batch, _Guess, _gradient

    layout = layout_for(wide.model)
    word = layout.word_embedding_name
    names = [n for n, p in wide.model.named_parameters() if p.requires_grad]
    truth, guess = [2, 11, 12, 13, 14, 15, 16, 3], [2, 11, 12, 20, 14, 15, 16, 3]
    batch = _Batch(layout, _gradient(layout, truth, 1, names), [guess], [1])
    V = layout.word_embeddings.num_embeddings
    banned = torch.zeros(V, dtype=torch.bool)
    banned[:5] = True
    evidence = [[t] for t in guess]
    found = {}
    for deep in (0, 2):
        search = LikelihoodSearch(flips=0, neighbours=0, matched=0, screen=1, rows=1, keep_sure=False,
                                  context=1, deep=deep)
        search._begin()
        search._prior = None
        search._context = ContextCandidates(_Ranked({3: [30, 13]}, V), torch.zeros(V, len(truth)), banned, 1)
        g = _Guess(batch, 0)
        search._sweep(batch, g, range(3, 4), evidence, banned, word, 1)  # screened: the decoy alone
        assert g.x[3] != 13
        g = _Guess(batch, 0)
        search._sweep(batch, g, range(3, 4), evidence, banned, word, 0)  # on J
        assert g.x[3] != 13
        g = _Guess(batch, 0, weighted=True)
        search._sweep(batch, g, range(3, 4), evidence, banned, word, 0)
        found[deep] = g.x[3]
    assert found[0] != 13 and found[2] == 13


def test_the_head_is_prepared_before_the_attacks_clock_starts(wide, monkeypatch):
    """`recover` runs the attack's one-time preparation (`attacks.base.prepare`: likelihood.context's
    head read or fitted) before its time budget starts, and `auto` prepares its likelihood stage (on
    by default): a slow fit does not eat the budget. With `context` 0 nothing is prepared."""
    import time

    import textleak
    from textleak.attacks.auto import Auto
    from textleak.attacks.base import prepare
    from textleak.core.budget import current
    from textleak.text import masked_prior as mp

    fits, heads = [], {}

    def slow_fit(target):  # as the real loader: fitted once (slowly), then cached
        if id(target) not in heads:
            fits.append(current().describe()["seconds"])  # the budget in force while the head is fitted
            time.sleep(0.3)
            heads[id(target)] = _Peaked({}, len(target.tokenizer))
        return heads[id(target)]

    monkeypatch.setattr(mp, "load_context_head", slow_fit)
    prepare(Auto(likelihood={"context": 0}), wide)
    assert fits == []
    prepare(Auto(), wide)
    assert fits == [None]
    heads.clear()
    cap = textleak.capture_gradients(wide, ["big cat ran quickly"], labels=[1], defence="noise:1e-1")
    res = textleak.recover(gradients=cap.gradients, model=wide, attack="likelihood", unknown=["labels"],
                           options={"context": 2, "sweeps": 1, "rounds": 1}, progress=False, budget=0.25)
    assert fits == [None, None]  # fitted outside any budget, before the attack's clock
    assert res.details["budget"]["seconds"] == pytest.approx(0.25, abs=1e-3)


def test_without_training_sentences_the_search_runs_without_context_and_says_why(wide, tmp_path, monkeypatch,
                                                                                  capsys):
    """No training sentence to fit the head on: `recover` (its `prepare`, then the search) neither
    fails nor silently drops the option; one stderr line at prepare time, and the result records
    that the context candidates were not used and why (details["context"]). Used where there is a head."""
    import textleak
    from textleak.text import masked_prior as mp

    (tmp_path / "train_x.tsv").write_text("sentence\tlabel\ntoo short\t1\n")
    monkeypatch.setenv("TEXTLEAK_PRIOR_DATA", str(tmp_path / "train_*.tsv"))
    monkeypatch.setenv("TEXTLEAK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mp, "_HEADS", {})
    cap = textleak.capture_gradients(wide, ["big cat ran quickly"], labels=[1], defence="noise:1e-1")
    opts = {"context": 2, "sweeps": 1, "rounds": 1}
    res = textleak.recover(gradients=cap.gradients, model=wide, attack="likelihood", unknown=["labels"],
                           options=opts, progress=False, budget=2)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "context candidates" in ln]
    assert len(lines) == 1 and "TEXTLEAK_PRIOR_DATA" in lines[0]
    assert res.details["context"]["used"] is False and "TEXTLEAK_PRIOR_DATA" in res.details["context"]["reason"]
    assert len(res.texts) == 1
    monkeypatch.setattr(mp, "load_context_head", lambda target: _Peaked({}, len(target.tokenizer)))
    res = textleak.recover(gradients=cap.gradients, model=wide, attack="likelihood", unknown=["labels"],
                           options=opts, progress=False, budget=2)
    assert res.details["context"] == {"used": True, "candidates": 2}
    assert "context candidates" not in capsys.readouterr().err


def test_no_head_is_prepared_where_the_search_does_not_apply(wide, monkeypatch):
    """Given the observation (as `recover` has it), `prepare` reads or fits no head where the search's
    preflight refuses (a noiseless gradient, as `textleak demo`'s), and does where it applies; a
    tokenizer without a mask token has no head, and says so."""
    from types import SimpleNamespace

    import textleak
    from textleak.attacks.auto import Auto
    from textleak.attacks.base import prepare
    from textleak.text import masked_prior as mp
    from textleak.threat import Observation

    fits = []
    monkeypatch.setattr(mp, "load_context_head", lambda target: fits.append(1) or _Peaked({}, len(target.tokenizer)))
    seen = {d: Observation.from_file(textleak.capture_gradients(wide, ["big cat ran quickly"], labels=[1],
                                                                  defence=d).gradients, unknown=["labels"])
            for d in ("none", "noise:1e-1")}
    prepare(Auto(likelihood={"context": 2}), wide, seen["none"])
    assert fits == []
    prepare(Auto(likelihood={"context": 2}), wide, seen["noise:1e-1"])
    assert fits == [1]
    assert mp.context_head(SimpleNamespace(tokenizer=SimpleNamespace(mask_token_id=None))) == \
        (None, "the tokenizer has no mask token")


def test_the_head_fits_on_sentences_longer_than_the_models_positions(wide):
    """The tiny model has 24 positions; training sentences of 32 tokens are cut to them, not an
    IndexError from the position table (the shared TSVs hold such sentences)."""
    from textleak.text.masked_prior import ContextHead

    tok = wide.tokenizer
    long = tok(" ".join(["the dog sat on the log ."] * 5))["input_ids"]
    assert len(long) > wide.model.config.max_position_embeddings
    head = ContextHead(layout_for(wide.model), tok.mask_token_id, {})
    assert head.fit([long] * 40, epochs=1)["examples"] > 40
