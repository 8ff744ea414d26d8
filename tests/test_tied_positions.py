"""Token placements under a tied masked-LM head (`leaks.tied_positions`): the head's hidden states
recovered from the dense word rows, then the input part placed as an untied head's rows."""

from __future__ import annotations

import pytest
import torch

import textleak
from textleak.text.layouts import layout_for
from textleak.text.leaks.tied_positions import tied_head_states, tied_token_positions
from textleak.text.models import load_text_model
from textleak.threat import Observation

# repeated words: some masked targets occur several times (the rounds' case). A small random tied
# model's masked states are too alike to span M directions; the packaged MiniLM's do
TEXTS = ["the cat sat on the mat and the dog sat on the rug .", "the film is a good film , and the cast is good .",
         "a man and a woman walk to the park on a sunny day .", "the book on the table is the book i read .",
         "it is what it is , and that is that ."]


@pytest.fixture(scope="module")
def target():
    torch.set_num_threads(1)
    return load_text_model(None, task="mlm")


def _true_states(layout, cap):
    ids = cap.reference.masked_input_ids
    width = max(map(len, ids))
    batch = torch.tensor([s + [0] * (width - len(s)) for s in ids])
    mask = (torch.arange(width)[None] < torch.tensor([len(s) for s in ids])[:, None]).long()
    head = layout.mlm_head()
    with torch.no_grad():
        hidden = layout.hidden_states(batch, mask)
        at = torch.stack([hidden[b, p] for b, pos in enumerate(Observation.from_file(cap.gradients).knowledge.mask_positions) for p in pos])
        return head.norm(head.activation(head.dense(at))).double()


@pytest.mark.slow
@pytest.mark.parametrize("seed", [3, 5, 9, 10])  # targets counted 2-5 times; 5, 9, 10 need a second round
def test_tied_head_states_and_placements(target, seed):
    cap = textleak.capture_gradients(target, TEXTS, task="mlm", seed=seed)
    layout, grads = layout_for(target.model), cap.gradients.gradients
    M = sum(len(p) for p in Observation.from_file(cap.gradients).knowledge.mask_positions)
    states = tied_head_states(layout, grads, M)
    assert states is not None and len(states.coords) == M
    h = _true_states(layout, cap)
    got = states.coords @ states.basis
    dist = torch.cdist(got, h)
    assert len(set(dist.argmin(1).tolist())) == M  # every state, once
    assert float((dist.min(1).values / h.norm(dim=1)[dist.argmin(1)]).max()) < 1e-4
    ids = cap.reference.masked_input_ids
    tokens = sorted({t for s in ids for t in s})
    where: dict[int, set[int]] = {}
    for s in ids:
        for i, t in enumerate(s):
            where.setdefault(t, set()).add(i)
    pins = tied_token_positions(layout, grads, tokens, max(map(len, ids)), M)
    assert pins is not None
    assert all(p <= where[t] for t, p in pins.placed.items())  # none placed wrongly
    assert all(t in pins.allowed[i] for s in ids for i, t in enumerate(s))
    single = {t for t in tokens if len(where[t]) == 1}
    assert len(pins.complete & single) >= 0.8 * len(single)


@pytest.mark.slow
def test_tied_head_states_refuse_a_wrong_mask_count(target):
    cap = textleak.capture_gradients(target, TEXTS, task="mlm", seed=0)
    layout = layout_for(target.model)
    M = sum(len(p) for p in Observation.from_file(cap.gradients).knowledge.mask_positions)
    assert tied_head_states(layout, cap.gradients.gradients, M + 1) is None


@pytest.mark.slow
def test_exact_within_the_limit_uses_the_tied_placements(target):
    """Within the rank limit `exact` places a tied head's tokens as `beyond_rank` does (before: no
    placement for a tied head, every layer-0 candidate at every position), and stays exact."""
    cap = textleak.capture_gradients(target, TEXTS[:3], task="mlm", seed=3)
    res = textleak.recover(gradients=cap.gradients, model=target, attack="exact", reference=cap.reference,
                           seed=0, progress=False)
    placed = res.details["placed_tokens"]
    assert placed is not None and placed["placed"] >= 0.5 * placed["tokens"]
    assert res.metrics["mean"]["exact_match"] == 1.0
