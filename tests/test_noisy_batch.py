"""`exact-noisy` on a batch under faint noise: spans that keep their weakest directions, the
noisy rows' tokens as candidates, and sentences taken one by one instead of copies of the
strongest one (#15's noise curve at batch 4)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

import textleak
from textleak.attacks.exact.search import Search
from textleak.attacks.noisy import NoisyExact
from textleak.text.leaks import SpanReader
from textleak.text.leaks.noise import span_of
from textleak.threat import Knowledge, Observation

TEXTS = ["the film was a delight", "a dull , tired story", "it is what it is", "she has kissed her ."]


def _observation(cap):
    know = Knowledge.from_dict(cap.gradients.metadata["knowledge"]).without("labels")
    return Observation(cap.gradients.gradients, cap.gradients.metadata, know)


def test_faint_noise_on_a_batch_gives_each_sentence_once(minilm3):
    # at variance 1e-14 a third of layer 0's directions sink under the noise edge on this model;
    # before, every slot settled into the same strongest sentence ("dull dull kissed story delight" x 4)
    cap = textleak.capture_gradients(minilm3, TEXTS, labels=[1, 0, 1, 0], defence="noise:1e-14", seed=0)
    out = NoisyExact().run(_observation(cap), minilm3)
    assert out.details["noise"]["layer0_signal_directions"] < out.details["layer0_rank"]
    assert out.details["vocabulary"] == "word-embedding rows standing out of the noise"
    guessed = [tuple(s) for s in out.prediction["token_ids"]]
    assert len(set(guessed)) == len(TEXTS)  # no copies
    assert len(set(guessed) & {tuple(s) for s in cap.reference.token_ids}) >= 3
    assert not out.details["certified"] or sorted(guessed) == sorted(map(tuple, cap.reference.token_ids))


def test_fainter_noise_is_read_exactly_and_certified_on_the_strong_directions(minilm3):
    cap = textleak.capture_gradients(minilm3, TEXTS, labels=[1, 0, 1, 0], defence="noise:1e-18", seed=0)
    out = NoisyExact().run(_observation(cap), minilm3)
    assert sorted(map(tuple, out.prediction["token_ids"])) == sorted(map(tuple, cap.reference.token_ids))
    assert out.details["certified"]


def test_a_bounded_noisy_span_keeps_the_bound_and_strict_drops_what_the_noise_hides():
    gen = torch.Generator().manual_seed(0)
    H, r = 64, 12
    left, right = torch.linalg.qr(torch.randn(3 * H, r, generator=gen, dtype=torch.double))[0], \
        torch.linalg.qr(torch.randn(H, r, generator=gen, dtype=torch.double))[0]
    G = left @ torch.diag(torch.logspace(0, -3, r, dtype=torch.double)) @ right.T
    sigma = 1e-4
    G = G + sigma * torch.randn(G.shape, generator=gen, dtype=torch.double)
    kept = span_of(G, 1, rank_bound=r, sigma=sigma, keep_bound=True)
    assert kept.rank == r and 0 < kept.signal < r
    strict = kept.strict()
    assert strict.rank == kept.signal and torch.equal(strict.basis, kept.basis[:, :kept.signal])
    assert span_of(G, 1, rank_bound=r, sigma=sigma).rank == kept.signal  # the old reading
    reader = SpanReader([r], special_tokens=False, sigma=sigma)
    assert reader.bound(1) == r


class _Span:
    def without(self, layout, seq):
        return ("without", tuple(seq))


def test_settling_for_the_best_miss_skips_copies_of_found_sentences():
    near = {5: [(0.10, [2, 7, 8, 9, 3]), (0.40, [2, 11, 12, 13, 3])],
            6: [(0.30, [2, 7, 8, 9, 10, 3]), (0.90, [2, 14, 15, 16, 17, 3])]}
    state = SimpleNamespace(config=SimpleNamespace(settles=True), missing=[5, 6], near=near,
                            found=[[2, 7, 8, 9, 10, 11, 3]], span1=_Span(), layout=None)
    # the 5-token miss copies the found sentence's start, and so does the 6-token one: the next best
    assert Search.settle_for_best(state)
    assert state.found[-1] == [2, 11, 12, 13, 3] and state.missing == [6] and state.near == {}
    assert state.span1 == ("without", (2, 11, 12, 13, 3))
    assert not Search.settle_for_best(state)  # nothing left to choose from
    assert not Search.settle_for_best(SimpleNamespace(config=SimpleNamespace(), missing=[6], near=near))
