"""`exact-update`'s embedding rows of what a peel leaves (`UpdatePeeler` with `rows`, `update_rest_rows`, option
`rest_rows`): on the packaged MiniLM, RT dev batch 0 of 8, K 4, lr 1e-3, with the five short sentences peeled (the
true ones), the tokens still standing in what is left are exactly the three long sentences' tokens, and each of
their inner positions keeps its true tokens among its first `RANKED_TOP` in the rest's ranking; with four
sentences left no ranking narrows the positions yet."""

from __future__ import annotations

import pytest

from textleak.attacks.update import layer0_tolerance
from textleak.attacks.update_peel import UpdatePeeler
from textleak.attacks.update_rest_rows import RANKED_TOP, RestRows
from textleak.attacks.update_rounding import RoundingFits
from textleak.text.layouts import layout_for
from textleak.text.leaks.noise import span_of

from test_update_layers import RT_BATCH8, batch8_update


@pytest.mark.slow
def test_what_the_short_sentences_leave_holds_the_long_ones_tokens_at_their_ranked_positions(one_thread):
    target, cap, observation, facts = batch8_update(RT_BATCH8, [1, 1, 1, 1, 1, 0, 0, 1])
    U = observation.gradients
    true, start = cap.reference.token_ids, layout_for(target.model)
    lengths = [len(s) for s in true]
    fits = RoundingFits(start, U, facts.lr, facts.steps)
    fits.span(1, span_of(fits.matrices(1)[0], 1, rank_bound=sum(lengths), keep_bound=True), sum(lengths))
    peeler = UpdatePeeler(start, U, lengths, facts, tolerance0=layer0_tolerance, fits=fits,
                          rows=RestRows(start, U, facts.lr, facts.steps))
    long_ = sorted(range(8), key=lambda b: -lengths[b])[:3]  # 38, 38, 32 tokens
    short = sorted((b for b in range(8) if b not in long_), key=lambda b: lengths[b])
    for b in short[:-1]:
        rest = peeler.peel(true[b])
    assert rest.allowed == {t for b in long_ + short[-1:] for t in true[b]} and rest.positions is None
    rest = peeler.peel(true[short[-1]])
    assert rest.allowed == {t for b in long_ for t in true[b]}  # 84 of the 137 leaked tokens
    for b in long_:
        assert all(true[b][p] in rest.positions.allowed[p] for p in range(1, lengths[b] - 1))
    assert max(len(a) for a in rest.positions.allowed) <= RANKED_TOP
