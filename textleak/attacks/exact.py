"""Exact recovery of text from the span of first-layer attention gradients (after DAGER,
Petrov et al., "DAGER: Exact Gradient Inversion for Large Language Models", NeurIPS 2024).

Threat model: honest-but-curious; the attacker holds the model and sees the gradients of the
first two encoder layers' query/key/value weights (BERT-style encoders). Labels and lengths are
used when declared, otherwise recovered / inferred from the gradient (and the result says so).

Why it works: a linear layer's weight gradient is sum_i delta_i x_i^T, so its row space is the
span of the layer's inputs x_i whenever the number of non-padding tokens B x L is below the hidden
size H (MiniLM: 384). Layer 0 receives x = LayerNorm(E[token] + P[position] + T[0]), so testing
every (token, position) candidate against the span (relative residual after projecting on the
right singular vectors; rank at the last clear singular-value drop; threshold at the widest gap of
the residuals) finds the input tokens. Because position embeddings are additive, a token seen at
one position can also pass at another: once the batch has more tokens than distinct tokens plus
positions (MiniLM, CoLA: about batch 8) the layer-0 span holds every (batch token, position)
pair, so layer 0 yields per-position candidate sets. Sentences are assembled at layer 1 by one
beam search over prefixes shared by the batch (a prefix scored by the layer-1 residual of its
tokens with the unknown rest left out of attention), finished by coordinate descent on the
whole-sentence layer-1 residual, which is ~0 only for the true sentence (the certificate). Masked-LM labels are solved per masked position from the prediction-head
transform gradient, classification labels from the classifier weight gradient.

Degrades: with no rank gap (B x L >= H, or noise) the attack raises MissingKnowledgeError
naming the condition; an assembly that does not reach the certificate is returned with
`details["certified"] = False` and its candidate sets, which `auto` hands to optimisation.

Arguments: `beam` (prefixes kept per sentence of the batch), `trials` (least candidates scored per
step), `sweeps` (coordinate-descent passes over each sentence), `seed`.
Shapes: layer span basis [H, r]; candidates: per position a list of (token id, residual).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch

from ..errors import InputError, MissingKnowledgeError
from ..threat import Observation
from ..text import leakage as lk
from ..text.decode import allowed_token_ids, ids_to_text
from ..text.inference import infer_lengths
from .base import ATTACKS, AttackOutput


@ATTACKS.register("exact")
@dataclass
class Exact:
    name: ClassVar[str] = "exact"
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    sweeps: int = 3
    beam: int = 4
    trials: int = 512
    seed: int = 0

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        t0 = time.perf_counter()
        grads, know, model, tok = observation.gradients, observation.knowledge, target.model, target.tokenizer
        span0 = lk.layer_span(grads, 0)
        if not span0.exact:
            raise MissingKnowledgeError(
                f"exact recovery needs fewer input tokens than the hidden size ({span0.basis.shape[0]}); the "
                "first layer's gradient shows no rank gap (batch x length too large, or noise)")
        assumed: dict[str, Any] = {"special_tokens": bool(know.special_tokens)}
        if know.seq_lengths is not None:
            lengths, assumed["seq_lengths"] = [int(n) for n in know.seq_lengths], "known"
        else:
            inferred, note = infer_lengths(observation, target)
            lengths, assumed["seq_lengths"] = list(inferred), note
        vocab, vocab_source = self._vocabulary(grads, tok, observation.task)
        cands, threshold = lk.position_candidates(model, span0, vocab, max(lengths))
        specials = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} - {None}
        span1 = lk.layer_span(grads, 1) if lk.qkv_names(grads, 1) else None
        if span1 is not None and span1.rank < span0.rank:
            span1 = None  # e.g. the last layer of a classifier: only [CLS] feeds the loss there
        sequences, residuals = self._assemble(model, cands, lengths, span1, specials, tok, know.special_tokens)
        certified = self._certified(span1, residuals, cands, lengths)
        prediction = {"token_ids": sequences}
        if observation.task == "classify":
            prediction["labels"], assumed["labels"] = self._class_labels(observation, model, sequences)
        else:
            prediction["token_ids"], prediction["labels"], assumed["labels"], assumed["mask_positions"] = \
                self._mlm_labels(observation, target, sequences)
        prediction["texts"] = [ids_to_text(tok, row) for row in prediction["token_ids"]]
        details = {
            "certified": certified, "layer0_rank": span0.rank, "layer0_gap": span0.gap,
            "layer0_threshold": threshold, "layer1_rank": span1.rank if span1 else None,
            "sentence_residuals": [float(r) for r in residuals], "vocabulary": vocab_source,
            "candidates_per_position": [len(c) for c in cands],
            "candidates": [[t for t, _ in c] for c in cands], "seconds": time.perf_counter() - t0,
        }
        return AttackOutput(prediction=prediction, method=self.name, assumed=assumed,
                            config={"sweeps": self.sweeps, "beam": self.beam, "trials": self.trials, "seed": self.seed}, details=details)

    # -- steps -------------------------------------------------------------------------------
    @staticmethod
    def _vocabulary(grads, tok, task: str) -> tuple[torch.Tensor, str]:
        leaked = lk.embedding_token_set(grads)
        if leaked is not None:
            return leaked, "nonzero rows of the word-embedding gradient"
        ids = allowed_token_ids(tok).tolist()
        extra = [tok.cls_token_id, tok.sep_token_id] + ([tok.mask_token_id] if task == "mlm" else [])
        return torch.tensor(sorted(set(ids) | {i for i in extra if i is not None})), "whole vocabulary"

    def _assemble(self, model, cands: list[list[tuple[int, float]]], lengths: Sequence[int],
                  span1: lk.LayerSpan | None, specials: set[int], tok, template: bool
                  ) -> tuple[list[list[int]], list[float]]:
        """Beam search over prefixes, left to right, shared by all sentences of the batch.

        Layer 1 sees each token through attention over its whole sentence, so a token can only be
        judged in context. A prefix is scored by the layer-1 span residual of its tokens with the
        unknown rest of its sentence left out of attention: the true prefixes of every sentence
        stay near zero, so one beam (width `beam` x batch size) carries all of them at once.
        Wherever a prefix could end a sentence of a declared length, its completion (with [SEP])
        is scored on the whole-sentence residual; each length takes its best distinct completions,
        which are then polished by coordinate descent on that residual (exact context)."""
        cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
        ends = template and cls_id is not None and sep_id is not None

        def free(p: int) -> list[int]:
            return [t for t, _ in cands[p] if t not in specials] or [cands[p][0][0]]

        if span1 is None or not span1.exact:  # no second layer: each position's best candidates
            sequences = [[cls_id if ends and p == 0 else sep_id if ends and p == n - 1 else
                          free(p)[b % len(free(p))] for p in range(n)] for b, n in enumerate(lengths)]
            return sequences, [float("nan")] * len(lengths)
        wanted = {n: lengths.count(n) for n in set(lengths)}
        # at least `trials` candidates per step: cheap where layer 0 left few tokens per position
        widest = max(len(free(p)) for p in range(max(lengths)))
        width = max(self.beam * len(lengths), self.trials // max(widest, 1))
        beams: list[list[int]] = [[cls_id]] if ends else [[]]
        finished: dict[int, list[tuple[float, list[int]]]] = {n: [] for n in wanted}
        for p in range(len(beams[0]), max(lengths) - (1 if ends else 0)):
            trials = [prefix + [t] for prefix in beams for t in free(p)]
            ids = torch.tensor(trials)
            pos = torch.arange(p + 1).expand_as(ids)
            scores = torch.cat([lk.partial_residuals(model, span1, ids[i:i + 4096], pos[i:i + 4096]).sum(1)
                                for i in range(0, len(ids), 4096)])
            beams = [trials[i] for i in torch.argsort(scores)[:width].tolist()]
            n = p + 2 if ends else p + 1
            if n in wanted:
                done = [b + [sep_id] if ends else b for b in beams]
                full = lk.sequence_residuals(model, span1, done)
                finished[n] += [(float(r), d) for r, d in zip(full, done)]
        if ends and 2 in wanted:
            finished[2] = [(float(lk.sequence_residuals(model, span1, [[cls_id, sep_id]])[0]), [cls_id, sep_id])]
        picked: dict[int, list[list[int]]] = {}
        for n, k in wanted.items():
            chosen: list[list[int]] = []
            for _, seq in sorted(finished[n], key=lambda x: x[0]):
                if seq not in chosen:
                    chosen.append(seq)
                if len(chosen) == k:
                    break
            while len(chosen) < k:  # the beam never reached this length: fall back per position
                chosen.append([cls_id if ends and q == 0 else sep_id if ends and q == n - 1 else free(q)[0]
                               for q in range(n)])
            picked[n] = chosen
        sequences, residuals = [], []
        for n in lengths:
            seq, res = self._polish(model, span1, free, picked[n].pop(0), ends)
            sequences.append(seq)
            residuals.append(res)
        return sequences, residuals

    def _polish(self, model, span1, free, seq: list[int], ends: bool) -> tuple[list[int], float]:
        """Coordinate descent on the whole-sentence layer-1 residual (each token in its true
        context once the rest is right)."""
        current = float(lk.sequence_residuals(model, span1, [seq])[0])
        for _ in range(self.sweeps):
            if current <= span1.floor ** 2 * len(seq):  # certified (see _certified)
                break
            changed = False
            for p in range(len(seq)):
                if ends and (p == 0 or p == len(seq) - 1):
                    continue
                options = [t for t in free(p) if t != seq[p]]
                if not options:
                    continue
                trials = [seq[:p] + [t] + seq[p + 1:] for t in options]
                scores = lk.sequence_residuals(model, span1, trials)
                j = int(scores.argmin())
                if float(scores[j]) < current:
                    seq, current, changed = trials[j], float(scores[j]), True
            if not changed:
                break
        return seq, current

    @staticmethod
    def _certified(span1, residuals, cands, lengths) -> bool:
        if span1 is not None and span1.exact:
            return all(r == r and r <= span1.floor ** 2 * n for r, n in zip(residuals, lengths))
        # without a second layer only an unambiguous single sentence is certain
        return len(lengths) == 1 and all(len(c) == 1 for c in cands[:lengths[0]])

    @staticmethod
    def _forward_batch(model, sequences):
        L = max(len(s) for s in sequences)
        ids = torch.zeros(len(sequences), L, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, s in enumerate(sequences):
            ids[b, :len(s)] = torch.tensor(s)
            mask[b, :len(s)] = 1
        return ids, mask

    def _class_labels(self, observation, model, sequences) -> tuple[list[int], str]:
        know = observation.knowledge
        if know.labels is not None:
            return [int(y) for y in know.labels], "known"
        ids, mask = self._forward_batch(model, sequences)
        with torch.no_grad():
            out = model.base_model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
            probs = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits.softmax(-1)
        if out.pooler_output is not None and lk._find(observation.gradients, r"classifier\.weight$"):
            return lk.assign_class_labels(observation.gradients, out.pooler_output, probs), \
                "recovered from the classifier weight gradient given the recovered inputs"
        counts = lk.class_label_counts(observation.gradients, len(sequences))
        return [c for c, n in enumerate(counts) for _ in range(n)], \
            "counts recovered from the classifier bias gradient (order unknown)"

    def _mlm_labels(self, observation, target, sequences):
        know, model, tok = observation.knowledge, target.model, target.tokenizer
        if know.mask_positions is not None:
            positions = [list(p) for p in know.mask_positions]
            mask_note = "known"
        else:
            positions = [[p for p, t in enumerate(s) if t == tok.mask_token_id] for s in sequences]
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
            flat = self._solve_masked_tokens(observation, model, sequences, index)
            label_note = "recovered per masked position from the prediction-head transform gradient"
        filled = [list(s) for s in sequences]
        for (b, p), t in zip(index, flat):
            filled[b][p] = t
        labels, k = [], 0
        for pos in positions:
            labels.append(flat[k:k + len(pos)])
            k += len(pos)
        return filled, labels, label_note, mask_note

    @staticmethod
    def _solve_masked_tokens(observation, model, sequences, index) -> list[int]:
        """dL/d(pre_i) of the head's transform is read per masked position from its weight
        gradient (rows of hidden states are independent), then matched with each candidate token."""
        grads = observation.gradients
        dense_name = lk._need(grads, r"predictions\.transform\.dense\.weight$", "masked-token recovery")
        transform = model.get_submodule(dense_name[: -len(".dense.weight")])
        counts = lk.mlm_label_counts(grads, len(index))
        cand = torch.tensor(sorted(counts))
        ids, mask = Exact._forward_batch(model, sequences)
        with torch.no_grad():
            hidden = model.base_model(input_ids=ids, attention_mask=mask,
                                      token_type_ids=torch.zeros_like(ids)).last_hidden_state
        hm = torch.stack([hidden[b, p] for b, p in index]).double()
        M = len(index)
        D = (grads[dense_name].double() @ torch.linalg.pinv(hm)).T  # [M, H]: per-position dL/dpre
        pre = transform.dense(hm.float()).detach().requires_grad_()
        logits = model.get_output_embeddings()(transform.LayerNorm(transform.transform_act_fn(pre)))
        probs = logits.softmax(-1).detach()
        expected = torch.autograd.grad((probs * logits).sum(), pre, retain_graph=True)[0].double()
        u = expected - M * D  # = J_i^T e_{y_i}
        scores = torch.empty(M, len(cand), dtype=torch.double)
        for j, v in enumerate(cand.tolist()):
            jv = torch.autograd.grad(logits[:, v].sum(), pre, retain_graph=True)[0].double()
            scores[:, j] = (u - jv).norm(dim=1)
        return cand[scores.argmin(1)].tolist()
