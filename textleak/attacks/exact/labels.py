"""Labels of the assembled sentences, and (masked-LM) which batch slot each sentence fills.

Classification labels come from the classifier's output weight gradient given the recovered
inputs (`leaks.assign_class_labels`), else their counts from its bias. Masked-LM labels are solved
per masked position from the prediction-head transform gradient, as one assignment that uses each
leaked token as often as the output-bias gradient counts it.
"""

from __future__ import annotations

from typing import Any

import torch
from scipy.optimize import linear_sum_assignment

from ...errors import InputError
from ...text.layouts import Layout
from ...training import TrainingSettings
from ...text.leaks import assign_class_labels, class_label_counts, mlm_label_counts, padded
from .peeling import head_label_terms
from .sequences import slots_by_masks


def class_labels(observation: Any, layout: Layout, sequences: list[list[int]],
                 shares: list[float] | None = None) -> tuple[list[int], str]:
    """`shares`: each peeled sentence's fitted share of the gradient (`Peeler.fitted`); without
    them a gradient at an unknown scale (`TrainingSettings.scale_known`) takes the sign rule."""
    know = observation.knowledge
    if know.labels is not None:
        return [int(y) for y in know.labels], "known"
    ids, mask = padded(sequences, layout.device)
    with torch.no_grad():
        features, logits = layout.classifier_inputs(ids, mask)
    if layout.classifier().weight in observation.gradients:
        if shares:
            divisor, how = len(shares) / sum(shares), "at the peeled sentences' fitted share"
        elif TrainingSettings.of(observation.metadata).scale_known(observation.gradients):
            divisor, how = "batch", "of a mean loss"
        else:
            divisor, how = None, "by the sign rule (the gradient's scale is unknown)"
        return assign_class_labels(layout, observation.gradients, features, logits.softmax(-1), divisor), \
            f"recovered from the classifier weight gradient given the recovered inputs, {how}"
    counts = class_label_counts(layout, observation.gradients, len(sequences))
    return [c for c, n in enumerate(counts) for _ in range(n)], \
        "counts recovered from the classifier bias gradient (order unknown)"


def mlm_labels(observation: Any, layout: Layout, tokenizer: Any, sequences: list[list[int]]):
    """(sentences with their masked tokens filled in, labels per sentence, how the labels were
    obtained, how the masked positions were)."""
    know = observation.knowledge
    if know.mask_positions is not None:
        positions = [list(p) for p in know.mask_positions]
        mask_note = "known"
    else:
        positions = [[p for p, t in enumerate(s) if t == tokenizer.mask_token_id] for s in sequences]
        mask_note = "inferred: positions holding [MASK] (random/kept replacements are missed)"
    index = [(b, p) for b, pos in enumerate(positions) for p in pos]
    if any(p >= len(sequences[b]) for b, p in index):
        raise InputError("a masked position lies beyond its sentence's length")
    if know.labels is not None:
        flat = [int(t) for row in know.labels for t in row]
        label_note = "known"
    elif not index:
        flat, label_note = [], "no masked position"
    else:
        flat = solve_masked_tokens(observation, layout, sequences, index)
        label_note = "recovered per masked position from the prediction-head transform gradient"
    filled = [list(s) for s in sequences]
    for (b, p), t in zip(index, flat):
        filled[b][p] = t
    labels, k = [], 0
    for pos in positions:
        labels.append(flat[k:k + len(pos)])
        k += len(pos)
    return filled, labels, label_note, mask_note


def solve_masked_tokens(observation: Any, layout: Layout, sequences: list[list[int]],
                        index: list[tuple[int, int]]) -> list[int]:
    """dL/d(pre_i) of the head's transform is read per masked position from its weight
    gradient (rows of hidden states are independent), then matched with each candidate token;
    the matching is one assignment that uses each leaked token as often as the output-bias
    gradient counts it (per-position best choices can take one token twice and drop another)."""
    grads, head = observation.gradients, layout.mlm_head()
    layout.require(grads, [head.dense_weight], "masked-token recovery")
    counts = mlm_label_counts(layout, grads, len(index))
    cand = torch.tensor(sorted(counts))
    ids, mask = padded(sequences, layout.device)
    with torch.no_grad():
        hidden = layout.hidden_states(ids, mask)
    hm = torch.stack([hidden[b, p] for b, p in index]).double()
    M = len(index)
    D = (grads[head.dense_weight].to(hm.device).double() @ torch.linalg.pinv(hm)).T  # [M, E]: per-position dL/dpre
    expected, per_token = head_label_terms(head, hm, cand.tolist())
    u = expected - M * D  # = J_i^T e_{y_i}
    scores = (u[None] - per_token).norm(dim=2).T.cpu()  # [M, candidates]
    slots = [j for j, v in enumerate(cand.tolist()) for _ in range(counts[v])]
    if len(slots) != M:  # counts not usable (rounding): each position's best candidate
        return cand[scores.argmin(1)].tolist()
    rows, cols = linear_sum_assignment(scores[:, slots].numpy())
    chosen = [0] * M
    for r, c in zip(rows.tolist(), cols.tolist()):
        chosen[r] = int(cand[slots[c]])
    return chosen


def order_by_slots(observation: Any, tokenizer: Any, peeler: Any, sequences: list[list[int]],
                   residuals: list[float]) -> tuple[list[list[int]], list[float]]:
    """Masked-LM: declared mask positions belong to batch slots, and sentences of one length come
    out in any order: a peeled sentence goes to the slot its peel used, the rest to the slot whose
    positions their [MASK] tokens occupy. Otherwise the order is kept."""
    know = observation.knowledge
    if observation.task != "mlm" or know.mask_positions is None or tokenizer.mask_token_id is None:
        return sequences, residuals
    placed: dict[int, int | None] = {}
    if peeler is not None:
        for slot, seq in zip(peeler.slots, peeler.sentences):
            placed.setdefault(slot, next((i for i, s in enumerate(sequences)
                                          if s == seq and i not in placed.values()), None))
    order = slots_by_masks(sequences, [set(p) for p in know.mask_positions], tokenizer.mask_token_id,
                           {b: i for b, i in placed.items() if i is not None})
    return [sequences[i] for i in order], [residuals[i] for i in order]
