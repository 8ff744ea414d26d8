"""`exact-update`'s spans of what a peel leaves (`UpdatePeeler` with `tolerance0` and the rounding fits, option
`rest_spans`): on the packaged MiniLM, SST-2 dev batch 0 of 8, K 4, lr 1e-3, with the six short sentences peeled,
the rest's layer-0 candidates keep every true token of the 44- and 26-token sentences at about half the leaked
tokens per position, and the rest's layer-1 span fitted in the rounding box holds the 44-token sentence as a fixed
point of settling, where the raw span of what is left moves it 7 tokens off."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from textleak.attacks.exact.seeds import settle
from textleak.attacks.update import layer0_tolerance, midpoint_model
from textleak.attacks.update_peel import UpdatePeeler
from textleak.attacks.update_rounding import RoundingFits
from textleak.text.layouts import layout_for
from textleak.text.leaks import embedding_token_set, position_candidates
from textleak.text.leaks.noise import span_of

from test_update_layers import sst2_batch8_update


@pytest.mark.slow
def test_what_the_short_sentences_leave_narrows_the_long_ones_candidates_and_holds_the_44(one_thread):
    target, cap, observation, facts = sst2_batch8_update()
    U = observation.gradients
    true, start = cap.reference.token_ids, layout_for(target.model)
    lengths = [len(s) for s in true]
    mid = layout_for(midpoint_model(target.model, U, facts))
    fits = RoundingFits(start, U, facts.lr, facts.steps)
    fits.span(1, span_of(fits.matrices(1)[0], 1, rank_bound=sum(lengths), keep_bound=True), sum(lengths))
    rest = UpdatePeeler(start, U, lengths, facts, tolerance0=layer0_tolerance, fits=fits)
    plain = UpdatePeeler(start, U, lengths, facts)
    for seq in true[1:6] + true[7:]:  # the six short ones
        left, plain_left = rest.peel(seq), plain.peel(seq)
    assert plain_left.span0 is None and left.span0.rank == 44 + 26
    vocab = embedding_token_set(mid, U)
    per, _ = position_candidates(mid, left.span0, vocab, 44)
    for seq in (true[0], true[6]):
        assert all(seq[p] in {t for t, _ in per[p]} for p in range(1, len(seq) - 1))
    assert max(len(c) for c in per[1:43]) < 0.6 * len(vocab)  # 51 of 104 (the whole update: 103)
    ids = [[t for t, _ in c] for c in per]

    def settled(span):
        search = SimpleNamespace(layout=mid, span1=span, ends=True, config=SimpleNamespace(settle=10),
                                 free=lambda p, n=None: ids[p], slot_screen=0)
        return settle(search, [list(true[0])])[0]

    assert settled(left.span1) == true[0]
    assert sum(a != b for a, b in zip(settled(plain_left.span1), true[0])) >= 4  # 7 measured
