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
pair, and layer 0 no longer tells positions apart. Where the word-embedding gradient is sparse
(untied heads: classification), it does: each occurrence's share of a word- and a
position-embedding row is orthogonal to its own LayerNorm input, which places every token that
stands at one position in the batch (`lk.token_positions`; RT, batch 8: 117 candidates per
position become 17, for 5 true ones; recipes/token_positions.py). Sentences are assembled at layer 1, whose
input at a position depends on the whole sentence through attention: the whole-sentence layer-1
residual is ~0 only for the true sentence (the certificate). Whole sentences of each missing
length are seeded (a cheap beam over prefixes, random draws) and settled: each token re-chosen
as the candidate with the least layer-1 residual in the context of the rest, until none changes
(`lk.slot_residuals` scores a candidate in context for the cost of one token). Batches are then
peeled: a certified sentence's own gradient is subtracted from the batch's, which must drop the
layer-1 rank by its length (a second certificate), and the spans and token set of the rest are
read again; fewer sentences, fewer candidates. Its labels are those that make the subtraction
exact: a class (classification), or for masked-LM the declared masked positions of a slot of
its length and, per position, the leaked masked token whose term lowers the rank of the
prediction-head transform gradient (`_Peeler`). Misses stalled on a word split in pieces get
word moves (`_anchor`), misses that are true sentences out of place get shift moves (`_reseat`),
misses that settled into a sentence of another length are cut (`_cuts`) or grown (`_grow`) to
the lengths still missing; the search widens while it finds nothing. Masked-LM labels are finally solved per masked
position from the prediction-head transform gradient, classification labels from the
classifier weight gradient.

Degrades: with no rank gap (B x L >= H, or noise) the attack raises MissingKnowledgeError
naming the condition; an assembly that does not reach the certificate is returned with
`details["certified"] = False` and its candidate sets, which `auto` hands to optimisation.

Arguments: `beam` (prefixes kept per sentence of the batch), `trials` (least candidates scored per
step), `restarts` (random seeds per missing length and round), `settle` (most passes when
settling a seed), `widen` (largest factor by which a round that finds nothing widens the next
one), `sweeps` (passes of the whole-sentence polish, the last resort), `seed`.
Shapes: layer span basis [H, r]; candidates: per position a list of (token id, residual).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import torch
from scipy.optimize import linear_sum_assignment

from ..errors import InputError, MissingKnowledgeError
from ..threat import Observation
from ..text import leakage as lk
from ..text.decode import allowed_token_ids, ids_to_text
from ..text.inference import infer_lengths
from ..text.scale import ShareFit, class_labels
from ..text.precision import ROUND_TO, span_for
from ..training import TrainingSettings
from .base import ATTACKS, AttackOutput

log = logging.getLogger(__name__)

@ATTACKS.register("exact")
@dataclass
class Exact:
    name: ClassVar[str] = "exact"
    modalities: ClassVar[tuple[str, ...]] = ("text",)

    sweeps: int = 3
    settle: int = 10
    restarts: int = 4
    beam: int = 4
    widen: int = 4
    trials: int = 512
    seed: int = 0

    def run(self, observation: Observation, target: Any, *, checkpoint: str | Path | None = None,
            resume: bool = False, progress: bool = True) -> AttackOutput:
        t0 = time.perf_counter()
        grads, know, model, tok = observation.gradients, observation.knowledge, target.model, target.tokenizer
        settings = TrainingSettings.of(observation.metadata)
        low = settings.precision in ROUND_TO  # bf16 / fp16 autocast: no clean gap, ranks from the lengths
        span0 = None if low else lk.layer_span(grads, 0)
        if span0 is not None and not span0.exact:
            raise MissingKnowledgeError(
                f"exact recovery needs fewer input tokens than the hidden size ({span0.basis.shape[0]}); the "
                "first layer's gradient shows no rank gap (batch x length too large, or noise)")
        assumed: dict[str, Any] = {"special_tokens": bool(know.special_tokens)}
        if know.seq_lengths is not None:
            lengths, assumed["seq_lengths"] = [int(n) for n in know.seq_lengths], "known"
        else:
            inferred, note = infer_lengths(observation, target)
            lengths, assumed["seq_lengths"] = list(inferred), note
        if low:
            span0 = span_for(grads, 0, settings, sum(lengths))
        vocab, vocab_source = self._vocabulary(grads, tok, observation.task)
        vocab = vocab[vocab < model.get_input_embeddings().num_embeddings]
        cands, threshold = lk.position_candidates(model, span0, vocab, max(lengths))
        known_lengths = assumed["seq_lengths"] == "known"
        pins = lk.token_positions(model, grads, vocab.tolist(), max(lengths),
                                  _occupants(lengths) if known_lengths else None)
        specials = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id} - {None}
        span1 = span_for(grads, 1, settings, sum(lengths)) if lk.qkv_names(grads, 1) else None
        if span1 is not None and span1.rank < span0.rank:
            span1 = None  # e.g. the last layer of a classifier: only [CLS] feeds the loss there
        # peeling subtracts a recomputed gradient: exact only where the capture's arithmetic is
        peeler = _Peeler(observation, model, lengths, span1.rank, tok.mask_token_id, known_lengths) \
            if span1 is not None and not low else None
        masks = None
        if observation.task == "mlm" and know.mask_positions is not None and know.seq_lengths is not None \
                and len(know.mask_positions) == len(lengths):  # slots and their lengths declared together
            masks = {}
            for n, pos in zip(lengths, know.mask_positions):
                masks.setdefault(n, []).append(set(pos))
        with lk.layer0_table(model, max(lengths)):
            sequences, residuals = self._assemble(model, cands, lengths, span1, specials, tok, know.special_tokens,
                                                  peeler, masks, pins)
        if observation.task == "mlm" and know.mask_positions is not None and tok.mask_token_id is not None:
            # declared mask positions belong to batch slots; sentences of one length come out in
            # any order: a peeled sentence goes to the slot its peel used, the rest to the slot
            # whose positions their [MASK] tokens occupy
            placed = {}
            if peeler is not None:
                for slot, seq in zip(peeler.slots, peeler.sentences):
                    placed.setdefault(slot, next((i for i, s in enumerate(sequences)
                                                  if s == seq and i not in placed.values()), None))
            order = _slots_by_masks(sequences, [set(p) for p in know.mask_positions], tok.mask_token_id,
                                    {b: i for b, i in placed.items() if i is not None})
            sequences, residuals = [sequences[i] for i in order], [residuals[i] for i in order]
        certified = self._certified(span1, residuals, cands, lengths)
        prediction = {"token_ids": sequences}
        if observation.task == "classify":
            prediction["labels"], assumed["labels"] = self._class_labels(observation, model, sequences, peeler)
        else:
            prediction["token_ids"], prediction["labels"], assumed["labels"], assumed["mask_positions"] = \
                self._mlm_labels(observation, target, sequences)
        prediction["texts"] = [ids_to_text(tok, row) for row in prediction["token_ids"]]
        details = {
            "certified": certified, "layer0_rank": span0.rank, "layer0_gap": span0.gap,
            "layer0_threshold": threshold, "layer1_rank": span1.rank if span1 else None,
            "sentence_residuals": [float(r) for r in residuals], "vocabulary": vocab_source,
            "peeled": len(peeler.sentences) if peeler is not None and peeler.working else None,
            "peel_shares": list(peeler.fitted) if peeler is not None and peeler.working else None,
            "placed_tokens": None if pins is None else {
                "tokens": len(vocab), "placed": len(pins.complete), "closed_positions": len(pins.closed),
                "threshold": pins.threshold},
            "candidates_per_position": [len(c) for c in cands],
            "candidates": [[t for t, _ in c] for c in cands], "seconds": time.perf_counter() - t0,
        }
        return AttackOutput(prediction=prediction, method=self.name, assumed=assumed,
                            config={"sweeps": self.sweeps, "beam": self.beam, "trials": self.trials, "widen": self.widen,
                                    "settle": self.settle, "restarts": self.restarts, "seed": self.seed}, details=details)

    # -- steps -------------------------------------------------------------------------------
    @staticmethod
    def _vocabulary(grads, tok, task: str) -> tuple[torch.Tensor, str]:
        leaked = lk.embedding_token_set(grads)
        if leaked is not None:
            return leaked, "nonzero rows of the word-embedding gradient"
        if task == "mlm":
            # BERT's masking swaps 10% of the chosen tokens for a random id of the whole
            # vocabulary, [unusedN] rows included: every id is tested
            return torch.arange(len(tok)), "whole vocabulary, every id (masked-LM swaps in random ids)"
        ids = allowed_token_ids(tok).tolist()
        extra = [tok.cls_token_id, tok.sep_token_id]
        return torch.tensor(sorted(set(ids) | {i for i in extra if i is not None})), "whole vocabulary"

    def _assemble(self, model, cands: list[list[tuple[int, float]]], lengths: Sequence[int],
                  span1: lk.LayerSpan | None, specials: set[int], tok, template: bool,
                  peeler: "_Peeler | None" = None, masks: dict[int, list[set[int]]] | None = None,
                  pins: lk.TokenPositions | None = None) -> tuple[list[list[int]], list[float]]:
        """Sentences from per-position candidates, peeled off the batch one at a time.

        Each round seeds whole sentences of every missing length (the completions of one beam
        search over prefixes, `_beam`, and random draws from the per-position candidates),
        settles each by `_settle` (every token re-chosen in the context of the rest of its
        sentence until none changes) and accepts those that pass the certificate. An accepted
        sentence leaves the problem at once: where `peeler` can (classification), its own gradient
        is subtracted from the shared one, which leaves the spans and token set of the rest of
        the batch; in any case it is barred from later beams. Settled misses are also cut to
        the shorter lengths still missing (`_cuts`). A round that finds nothing tries word, shift
        and length moves (`_anchor`, `_reseat`, `_grow`) on its closest misses (and, in the widest
        round, whole-sentence polishing, `_polish`), then widens the next round: twice the beam
        and the random seeds. Candidates are narrowed to the tokens `pins` allows per position
        (read again after each peel); should the widest round fail within them, the search goes
        on over every layer-0 candidate."""
        cls_id, sep_id = tok.cls_token_id, tok.sep_token_id
        ends = template and cls_id is not None and sep_id is not None
        allowed: set[int] | None = None  # tokens left once found sentences are subtracted

        mask_id = tok.mask_token_id
        # masked-LM with declared mask positions: per length, where some slot masks / every slot does
        some = {n: set().union(*slots) for n, slots in masks.items()} if masks else {}
        every = {n: set.intersection(*slots) for n, slots in masks.items()} if masks else {}
        anywhere = set().union(*some.values()) if some else set()

        def free(p: int, n: int | None = None) -> list[int]:
            """Candidates at position p (in a sentence of length n, where known): [MASK] only
            where a slot of that length declares a masked position."""
            ids = [t for t, _ in cands[p] if t not in specials and (allowed is None or t in allowed)]
            ids = ids or [t for t, _ in cands[p] if t not in specials] or [cands[p][0][0]]
            if pins is not None and p < len(pins.allowed):
                ids = [t for t in ids if t in pins.allowed[p]] or ids
            if masks and mask_id in ids and p not in (anywhere if n is None else some.get(n, ())):
                ids = [t for t in ids if t != mask_id] or ids
            return ids

        if span1 is None or not span1.exact:  # no second layer: each position's best candidates
            sequences = [[cls_id if ends and p == 0 else sep_id if ends and p == n - 1 else
                          free(p)[b % len(free(p))] for p in range(n)] for b, n in enumerate(lengths)]
            return sequences, [float("nan")] * len(lengths)
        full_span = span1
        rng = random.Random(self.seed)
        found: list[list[int]] = []  # certified sentences, in the order found
        missing = list(lengths)  # lengths (one per sentence) still to find
        near: dict[int, list[tuple[float, list[int]]]] = {}  # best uncertified guesses per length
        pending: list[tuple[float, list[int]]] = []  # certified, but the first peel failed

        def take(seq: list[int], res: float) -> bool:
            nonlocal span1, allowed, cands, pins
            n = len(seq)
            if not span1.certifies(res, n) or seq in found or n not in missing:
                near.setdefault(n, []).append((res, seq))
                return False
            if peeler is not None and peeler.working:
                # the second test: a batch sentence's own gradient comes out of the batch's exactly
                rest = peeler.peel(seq, last=len(missing) == 1)
                if rest is None:
                    near.setdefault(n, []).append((res, seq))
                    if not peeler.labels:  # no sentence has come out yet: peeling may not hold here
                        pending.append((res, seq))
                    return False
                if rest.span1 is not None:
                    span1, allowed = rest.span1, rest.allowed
                    if pins is not None:
                        pins = rest.positions
                    near.clear()  # measured against the old span
                    if rest.span0 is not None:
                        # fewer sentences left: fewer (token, position) pairs pass layer 0 again
                        # (among the tokens left, or, where the embedding gradient is dense, among
                        # the candidates so far)
                        left = allowed if allowed else {t for c in cands for t, _ in c}
                        cands, _ = lk.position_candidates(model, rest.span0,
                                                          torch.tensor(sorted(left | specials)), max(missing))
            found.append(seq)
            missing.remove(n)
            return True

        # word pieces that continue a word (WordPiece's "##"): a word split in pieces is the
        # usual place settling stalls, see `_anchor`
        pieces = {t for c in cands for t, _ in c if str(tok.convert_ids_to_tokens(t)).startswith("##")}

        def anchor(model, span1, free, seq, ends):
            return self._anchor(model, span1, free, seq, ends, pieces)

        def grow(model, span1, free, seq, ends):
            return self._grow(model, span1, free, seq, ends, missing, sep_id)

        def draw(n: int) -> list[int]:
            # where every slot of this length is masked, [MASK] is what BERT's masking puts there 80% of the time
            body = [mask_id if q in every.get(n, ()) and rng.random() < 0.8 else rng.choice(free(q, n))
                    for q in range(1 if ends else 0, n - 1 if ends else n)]
            return [cls_id] + body + [sep_id] if ends else body

        widen = 1
        while missing:
            if widen > self.widen:
                if pins is None:
                    break
                # a token placed wrongly (a chance orthogonality) bars its sentence: drop the placements
                log.debug("nothing found within the placed positions: every layer-0 candidate from here on")
                pins, widen = None, 1
            progress = False
            wanted = {n: missing.count(n) for n in set(missing)}
            finished = self._beam(model, free, wanted, span1, ends, cls_id, sep_id, found, len(missing), widen)
            for n in sorted(wanted):
                seeds = [seq for _, seq in sorted(finished[n], key=lambda x: x[0])][:2 * wanted[n] * widen]
                seeds += [draw(n) for _ in range(self.restarts * widen)]
                tried: list[list[int]] = []
                for i in range(0, len(seeds), self.restarts):  # a batch at a time: stop once found
                    if n not in missing:
                        break
                    settled = self._settle(model, span1, free, seeds[i:i + self.restarts], ends,
                                           known=[g for _, g in near.get(n, [])])
                    settled = [seq for j, seq in enumerate(settled) if seq not in settled[:j] and seq not in tried]
                    tried += settled
                    for seq, res in zip(settled, lk.sequence_residuals(model, span1, settled).tolist() if settled else []):
                        progress |= take(seq, float(res))
                    # a seed may settle into a shorter sentence of the batch, with a stray token or
                    # two past its end (every token fits its true neighbours): cut it to size
                    cuts = [c for seq in settled if seq not in found for c in _cuts(seq, missing, ends, sep_id)]
                    for seq, res in zip(cuts, lk.sequence_residuals(model, span1, cuts).tolist() if cuts else []):
                        if span1.certifies(res, len(seq)):
                            progress |= take(seq, float(res))
            # settling stalled: larger moves on the closest misses (whole-sentence polishing, costly
            # and seldom the one that helps, only once the widest round has failed too)
            for move in (anchor, self._reseat, grow, self._polish):
                if progress or (move == self._polish and widen < self.widen):
                    break
                # closest misses first (residual per token), any length
                misses = sorted(((r / n, seq) for n in set(missing)
                                 for r, seq in sorted(near.get(n, []), key=lambda x: x[0])[:missing.count(n)]),
                                key=lambda x: x[0])
                for _, seq in misses:
                    if len(seq) in missing:
                        progress |= take(*move(model, span1, free, seq, ends))
                log.debug("after %s: found %d", getattr(move, "__name__", move), len(found))
            # the seeds missed what is left: search wider; once something is found (and peeled off,
            # which shrinks the candidates) narrow seeding is worth trying again
            log.debug("round: widen %d, found %d, missing %s, closest misses %s", widen, len(found), missing,
                      {n: [round(r / n, 5) for r, _ in sorted(v)[:3]] for n, v in near.items() if n in missing})
            widen = widen * 2 if not progress else 1
        if peeler is not None and not peeler.labels:
            # no sentence ever came out of the gradient (per-example clipping, dropout, a defence):
            # the layer-1 certificate alone decides, as without a peeler
            for _, seq in sorted(pending, key=lambda x: x[0]):
                if len(seq) in missing and seq not in found:
                    found.append(seq)
                    missing.remove(len(seq))
        by_length: dict[int, list[list[int]]] = {}
        for seq in found:
            by_length.setdefault(len(seq), []).append(seq)
        for n in missing:  # uncertified: the best distinct guesses, else per-position candidates
            guesses = [g for _, g in sorted(near.get(n, []), key=lambda x: x[0])
                       if g not in by_length.get(n, []) and not any(_follows(g, f) for f in found)]
            by_length.setdefault(n, []).append(guesses[0] if guesses else
                                               [cls_id if ends and q == 0 else sep_id if ends and q == n - 1
                                                else free(q, n)[0] for q in range(n)])
        sequences = [by_length[n].pop(0) for n in lengths]
        residuals = [float(r) for r in lk.sequence_residuals(model, full_span, sequences)]
        return sequences, residuals

    def _beam(self, model, free, wanted: dict[int, int], span1: lk.LayerSpan, ends: bool, cls_id, sep_id,
              found: list[list[int]], batch_size: int, widen: int = 1
              ) -> dict[int, list[tuple[float, list[int]]]]:
        """One beam search over prefixes, left to right, shared by the sentences still wanted.

        A prefix is scored by the sum, over its tokens, of each token's layer-1 residual when it
        was appended (attending to the prefix before it; the unknown rest left out), the way a
        decoder's beam sums log-probabilities; `lk.slot_residuals` makes each step cost one token
        per (prefix, candidate). Early tokens see little context, so the beam loses many true
        prefixes: its completions are seeds for `_settle`, not answers. Prefixes that retrace a
        `found` sentence (up to one token, or from 6 tokens on with 80% of its tokens in its
        order) or grow it past its end are dropped: they would crowd the beam. Wherever a prefix
        could end a wanted length, its completion (with [SEP]) is scored on the whole-sentence
        residual."""
        widest = max(len(free(p)) for p in range(max(wanted)))
        # at least `trials` candidates per step: cheap where layer 0 left few tokens per position
        width = max(self.beam * batch_size, self.trials // max(widest, 1)) * widen
        stems = [f[:-1] if ends else f for f in found]
        beams: list[list[int]] = [[cls_id]] if ends else [[]]
        scores = torch.zeros(1, dtype=torch.double)
        finished: dict[int, list[tuple[float, list[int]]]] = {n: [] for n in wanted}
        for p in range(len(beams[0]), max(wanted) - (1 if ends else 0)):
            keep = [i for i, b in enumerate(beams) if not any(_resembles(b, s) for s in stems)]
            beams, scores = [beams[i] for i in keep], scores[keep]
            options = free(p)
            if not beams:
                break
            step = torch.cat([lk.slot_residuals(model, span1, torch.tensor(beams[i:i + 64]), torch.tensor(options))
                              for i in range(0, len(beams), 64)])
            total = (scores[:, None] + step).flatten()
            trials = [prefix + [t] for prefix in beams for t in options]
            if stems:
                barred = torch.tensor([any(_follows(t, s) for s in stems) for t in trials])
                total = total.masked_fill(barred, float("inf"))
            order = [i for i in torch.argsort(total)[:width].tolist() if total[i] < float("inf")]
            if not order:
                break
            beams, scores = [trials[i] for i in order], total[order]
            n = p + 2 if ends else p + 1
            if n in wanted:
                done = [b + [sep_id] if ends else b for b in beams]
                full = lk.sequence_residuals(model, span1, done)
                finished[n] += [(float(r), d) for r, d in zip(full, done)]
        if ends and 2 in wanted:
            finished[2] = [(float(lk.sequence_residuals(model, span1, [[cls_id, sep_id]])[0]), [cls_id, sep_id])]
        return finished

    def _settle(self, model, span1, free, seqs: list[list[int]], ends: bool, known: Sequence[list[int]] = ()
                ) -> list[list[int]]:
        """Re-choose each token as the candidate whose own layer-1 residual, in the context of
        the rest of the sentence as it stands, is least; repeat until no token changes.

        In the true sentence every token's residual is ~0 and no other candidate's is, so it is
        a fixed point; from a seed with enough of it right, the rest falls into place. Each pass
        costs one token per (position, candidate) (`lk.slot_residuals`), not a whole sentence;
        seeds of one length settle side by side. Most seeds fall into the same few wrong fixed
        points (a true sentence of another length, cut or shifted): a seed whose pass ends within
        two tokens of one of the `known` misses stops there."""
        if not seqs:
            return []
        rows = torch.tensor(seqs)
        n = rows.shape[1]
        known_rows = torch.tensor([k for k in known if len(k) == n]).reshape(-1, n)
        inner = range(1, n - 1) if ends else range(n)
        active = torch.ones(len(rows), dtype=torch.bool)
        for sweep in range(self.settle):
            if sweep and len(known_rows):
                near_known = ((rows[:, None, :] != known_rows[None]).sum(-1) <= 2).any(1)
                active &= ~near_known
            idx = active.nonzero().flatten()
            if len(idx) == 0:
                break
            changed = torch.zeros(len(rows), dtype=torch.bool)
            for p in inner:
                options = torch.tensor(free(p, n))
                cur = rows[idx]
                scores = lk.slot_residuals(model, span1, cur[:, :p], options, cur[:, p + 1:])
                best = options[scores.argmin(1)]
                changed[idx] |= best != cur[:, p]
                rows[idx, p] = best
            active &= changed
        return rows.tolist()

    def _reseat(self, model, span1, free, seq: list[int], ends: bool, rounds: int = 3, top: int = 4
                ) -> tuple[list[int], float]:
        """Shift moves, for a miss that is a true sentence out of place: settling leaves a
        sentence with a word dropped or doubled near its start (the rest shifted by a position
        or two, each token still fitting its neighbours). Every variant that inserts or deletes
        1-3 tokens at one position (the length kept by trimming or padding at an end) is scored
        on the whole-sentence residual; the `top` best are settled; repeated while it improves."""
        best, best_res = seq, float(lk.sequence_residuals(model, span1, [seq])[0])
        for _ in range(rounds):
            variants = _shifted(best, ends)
            if not variants:
                break
            scores = lk.sequence_residuals(model, span1, variants)
            improved = False
            settled = self._settle(model, span1, free, [variants[j] for j in torch.argsort(scores)[:top].tolist()], ends)
            for seq, res in zip(settled, lk.sequence_residuals(model, span1, settled).tolist()):
                if res < best_res:
                    best, best_res, improved = seq, float(res), True
            if not improved or span1.certifies(best_res, len(best)):
                break
        return best, best_res

    def _grow(self, model, span1, free, seq: list[int], ends: bool, lengths: Sequence[int], sep_id
              ) -> tuple[list[int], float]:
        """Length moves, for a miss that is the start of a longer sentence of the batch (a seed
        of the wrong length settles into whichever sentence it resembles, cut at its own end):
        the miss grown to the next longer missing length (settled: one settle per miss, the
        cost of this move) and cut to each shorter one; the variant with the least residual per
        token."""
        n = len(seq)
        m = min((m for m in lengths if m > n), default=n)
        grown = [seq[:-1] + [seq[-2]] * (m - n) + [seq[-1]] if ends else seq + [seq[-1]] * (m - n)] if m > n else []
        variants = [seq] + self._settle(model, span1, free, grown, ends) + _cuts(seq, lengths, ends, sep_id)
        res = lk.sequence_residuals(model, span1, variants)
        i = int(torch.argmin(res / torch.tensor([len(v) for v in variants], dtype=res.dtype)))
        return variants[i], float(res[i])

    def _anchor(self, model, span1, free, seq: list[int], ends: bool, pieces: set[int], worst: int = 6,
                top: int = 4) -> tuple[list[int], float]:
        """Word moves, for a miss stalled on a word split in pieces (e.g. "mani ##pu ##lative").
        No piece ranks well alone: in a wrong context the true pieces come ~100th of 125, so no
        single-token change finds them. But given its last piece, the word's first piece ranks
        first (measured on RT). So at each of the `worst` positions (highest residual in
        context), every continuation piece is tried as the last piece of a word of two to four
        pieces, whose first piece (then middle pieces) is re-chosen in context; the `top` variants
        that lower the whole-sentence residual most are settled."""
        current = float(lk.sequence_residuals(model, span1, [seq])[0])
        trials = _word_trials(model, span1, free, seq, ends, pieces, worst)
        if not trials:
            return seq, current
        res = lk.sequence_residuals(model, span1, trials)
        best_ids = [i for i in torch.argsort(res)[:top].tolist() if float(res[i]) < current]
        best, best_res = (trials[best_ids[0]], float(res[best_ids[0]])) if best_ids else (seq, current)
        if span1.certifies(best_res, len(seq)):
            return best, best_res
        candidates = self._settle(model, span1, free, [trials[i] for i in best_ids], ends)
        for cand, r in zip(candidates, lk.sequence_residuals(model, span1, candidates).tolist() if candidates else []):
            if r < best_res:
                best, best_res = cand, float(r)
        return best, best_res

    def _polish(self, model, span1, free, seq: list[int], ends: bool, pairs: bool = True
                ) -> tuple[list[int], float]:
        """Coordinate descent on the whole-sentence layer-1 residual (each token in its true
        context once the rest is right). When single changes stall short of the certificate,
        adjacent pairs at the worst positions are changed together (a word split into two
        pieces, or two swapped tokens, needs both at once; one of the two among its `top` best
        single changes), then 3-token windows by a small beam; then single changes resume."""
        current = float(lk.sequence_residuals(model, span1, [seq])[0])
        inner = range(1, len(seq) - 1) if ends else range(len(seq))
        for _ in range(self.sweeps):
            if span1.certifies(current, len(seq)):
                break
            changed = False
            for p in inner:
                trials, scores = _substitutions(model, span1, seq, p, [t for t in free(p, len(seq)) if t != seq[p]])
                if not trials:
                    continue
                j = int(scores.argmin())
                if float(scores[j]) < current:
                    seq, current, changed = trials[j], float(scores[j]), True
                    if span1.certifies(current, len(seq)):
                        break
            if pairs and not changed and not span1.certifies(current, len(seq)):
                seq, current, changed = self._pair_step(model, span1, free, seq, current, inner)
            if not changed:
                break
        return seq, current

    @staticmethod
    def _pair_step(model, span1, free, seq: list[int], current: float, inner, worst: int = 3, top: int = 10
                   ) -> tuple[list[int], float, bool]:
        per_position = lk.position_residuals(model, span1, seq)
        order = [p for p in torch.argsort(per_position, descending=True).tolist() if p in inner]
        best, best_score = seq, current
        for p in order[:worst]:
            for q in (p - 1, p + 1):
                if q not in inner:
                    continue
                a, b = min(p, q), max(p, q)
                n = len(seq)
                best_a, best_b = (_best(model, span1, seq, x, free(x, n), top) for x in (a, b))
                pairs = {(s, t) for s in best_a for t in free(b, n)} | {(s, t) for s in free(a, n) for t in best_b}
                trials = [seq[:a] + [s, t] + seq[b + 1:] for s, t in sorted(pairs)]
                scores = lk.sequence_residuals(model, span1, trials)
                j = int(scores.argmin())
                if float(scores[j]) < best_score:
                    best, best_score = trials[j], float(scores[j])
        if best is seq:  # no pair helps: rebuild a 3-token window at the worst position by a small beam
            best, best_score = Exact._window(model, span1, free, seq, current, inner, order[0], top)
        return best, best_score, best is not seq

    @staticmethod
    def _window(model, span1, free, seq: list[int], current: float, inner, p: int, width: int
                ) -> tuple[list[int], float]:
        best, best_score = seq, current
        for start in (p - 2, p - 1, p):
            window = [q for q in range(start, start + 3) if q in inner]
            if len(window) < 3:
                continue
            beams = [list(seq)]
            for q in window:
                trials = [b[:q] + [t] + b[q + 1:] for b in beams for t in free(q, len(seq))]
                scores = lk.sequence_residuals(model, span1, trials)
                keep = torch.argsort(scores)[:width].tolist()
                beams = [trials[i] for i in keep]
                if float(scores[keep[0]]) < best_score:
                    best, best_score = beams[0], float(scores[keep[0]])
        return best, best_score

    @staticmethod
    def _certified(span1, residuals, cands, lengths) -> bool:
        if span1 is not None and span1.exact:
            return all(r == r and span1.certifies(r, n) for r, n in zip(residuals, lengths))
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

    def _class_labels(self, observation, model, sequences, peeler=None) -> tuple[list[int], str]:
        know = observation.knowledge
        if know.labels is not None:
            return [int(y) for y in know.labels], "known"
        ids, mask = self._forward_batch(model, sequences)
        with torch.no_grad():
            out = model.base_model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids))
            probs = model(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids)).logits.softmax(-1)
        name = lk._find(observation.gradients, r"(^|\.)classifier(\.out_proj)?\.weight$")
        if out.pooler_output is not None and name:
            # the examples' share of the gradient: fitted by the peel, 1/B for a plain mean loss,
            # else unknown (clipping, accumulation): then the sign rule, which needs no scale
            share = sum(peeler.fitted) / len(peeler.fitted) if peeler is not None and peeler.fitted else \
                (1 / len(sequences) if TrainingSettings.of(observation.metadata).scale_known else None)
            return class_labels(observation.gradients[name], out.pooler_output, probs, share and 1 / share), \
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
        gradient (rows of hidden states are independent), then matched with each candidate token;
        the matching is one assignment that uses each leaked token as often as the output-bias
        gradient counts it (per-position best choices can take one token twice and drop another)."""
        grads = observation.gradients
        dense_name = lk._need(grads, r"predictions\.transform\.dense\.weight$", "masked-token recovery")
        counts = lk.mlm_label_counts(grads, len(index))
        cand = torch.tensor(sorted(counts))
        ids, mask = Exact._forward_batch(model, sequences)
        with torch.no_grad():
            hidden = model.base_model(input_ids=ids, attention_mask=mask,
                                      token_type_ids=torch.zeros_like(ids)).last_hidden_state
        hm = torch.stack([hidden[b, p] for b, p in index]).double()
        M = len(index)
        D = (grads[dense_name].double() @ torch.linalg.pinv(hm)).T  # [M, H]: per-position dL/dpre
        expected, per_token = _head_label_terms(model, dense_name, hm, cand.tolist())
        u = expected - M * D  # = J_i^T e_{y_i}
        scores = (u[None] - per_token).norm(dim=2).T  # [M, candidates]
        slots = [j for j, v in enumerate(cand.tolist()) for _ in range(counts[v])]
        if len(slots) != M:  # counts not usable (rounding): each position's best candidate
            return cand[scores.argmin(1)].tolist()
        rows, cols = linear_sum_assignment(scores[:, slots].numpy())
        chosen = [0] * M
        for r, c in zip(rows.tolist(), cols.tolist()):
            chosen[r] = int(cand[slots[c]])
        return chosen


@dataclass
class _Rest:
    """What is left of a batch once sentences are peeled off: its layer-1 span (None when nothing
    is left), token set, layer-0 span (None without a rank gap) and token positions (None
    without the embedding gradients)."""

    span1: lk.LayerSpan | None
    allowed: set[int] | None = None
    span0: lk.LayerSpan | None = None
    positions: lk.TokenPositions | None = None


class _Peeler:
    """Takes found sentences out of the batch's gradient, one at a time.

    The batch gradient is the mean of its sentences' own gradients (classification: over
    sentences; masked-LM: over all M masked positions of the batch), and a found sentence's own
    gradient can be recomputed exactly (eval mode, as captured) once its labels are known. The
    labels are those whose subtraction drops the layer-1 rank by the sentence's length (for the
    last sentence: leaves nothing but rounding). That is a second certificate: a wrong sentence,
    even one the layer-1 residual lets pass, does not drop the rank, and `peel` refuses it (None).

    Classification tries every class. Masked-LM takes the masked positions from the declared
    ones of a batch slot of the sentence's length (its [MASK] tokens among them), and each
    position's token from the prediction-head transform gradient A = sum_j d_j h_j^T: removing
    the right term d_j(y) h_j^T lowers A's rank by one, which holds exactly when
    h_j^T A^+ d_j(y) = 1 with d_j(y) in A's column space (Wedderburn's rank-one reduction); the
    candidates y are the leaked masked tokens still counted by the output-bias gradient.
    `working` is False when the gradient lacks what the subtraction needs."""

    def __init__(self, observation, model, lengths: Sequence[int], rank: int, mask_id: int | None = None,
                 known_lengths: bool = False):
        self.grads, self.model, self.batch_size = observation.gradients, model, len(lengths)
        self.task, self.lengths, self.mask_id = observation.task, list(lengths), mask_id
        self.layer1 = lk.qkv_names(self.grads, 1)
        self.scale = sum(float(self.grads[n].double().norm()) for n in self.layer1)  # of what `last` leaves
        self.names = self.layer1 + lk.qkv_names(self.grads, 0)
        self.word = lk.word_embedding_name(self.grads) if lk.embedding_token_set(self.grads) is not None else None
        self.names += [self.word] if self.word else []
        # with it, what is left shows where its tokens stand (`lk.token_positions`)
        self.position_table = lk.position_embedding_name(self.grads) if self.word else None
        self.names += [self.position_table] if self.position_table else []
        self.known_lengths = known_lengths
        self.params = dict(model.named_parameters())
        self.working = True
        if self.task == "mlm":
            know = observation.knowledge
            self.dense = lk._find(self.grads, r"predictions\.transform\.dense\.weight$")
            # a slot's masked positions go with its length: both must be declared
            self.working = (know.mask_positions is not None and know.seq_lengths is not None
                            and self.dense is not None and mask_id is not None
                            and lk._find(self.grads, lk.MLM_OUTPUT_BIAS) is not None
                            and len(know.mask_positions) == len(lengths))
            if self.working:
                self.positions = [sorted(p) for p in know.mask_positions]
                self.masked = sum(len(p) for p in self.positions)  # M: the loss is a mean over them
                self.masked_left = self.masked
                self.counts = lk.mlm_label_counts(self.grads, self.masked)
                self.names.append(self.dense)
                self.working = self.masked > 0
        self.working = self.working and all(n in self.params for n in self.names)
        self.rest = {n: self.grads[n].double().clone() for n in self.names} if self.working else {}
        eps = torch.finfo(self.grads[self.layer1[0]].dtype).eps if self.layer1 else 1e-7
        self.shares = ShareFit(self.layer1, [n for n in self.names if n not in self.layer1],
                               [n for n in (self.word, self.position_table) if n], eps=eps,
                               per_tensor=TrainingSettings.of(observation.metadata).clip_per_tensor)
        self.fitted: list[float] = []  # the share each peeled sentence came out at
        self.rank = rank  # of the layer-1 span of what is left
        self.labels: list[Any] = []  # the label(s) of each sentence peeled, in order
        self.slots: list[int] = []  # masked-LM: the batch slot of each sentence peeled
        self.sentences: list[list[int]] = []  # each sentence peeled, in order

    def peel(self, seq: list[int], last: bool = False) -> _Rest | None:
        best = None
        for slot, labels in self._choices(seq):
            own = dict(zip(self.names, self._own(seq, slot, labels)))
            # the sentence's share is fitted, not assumed: clipping, loss scaling, accumulation
            scales = self.shares.scales(self.rest, own, self.rank, len(seq), last)
            if scales is None:
                continue
            trial = {n: self.rest[n] - a * own[n].double() for n, a in scales.items()}
            if last:  # nothing may be left but the capture's rounding
                r = sum(float(trial[n].norm()) for n in self.layer1) / self.scale
                ok = r < math.sqrt(torch.finfo(self.grads[self.layer1[0]].dtype).eps)
            else:
                r = lk.layer_span(_as_captured(trial, self.grads), 1).rank
                ok = r == self.rank - len(seq)
            if ok and (best is None or r < best[0]):
                best = (r, trial, slot, labels, scales)
                if not last:
                    break
        if best is None:
            return None
        r, trial, slot, labels, scales = best
        if not last:
            left = _as_captured(trial, self.grads)
            span = lk.layer_span(left, 1)
            if not span.exact:
                return None
        self.labels.append(labels)
        self.sentences.append(list(seq))
        self.fitted.append(sum(scales[n] for n in self.layer1) / len(self.layer1))
        if self.task == "mlm":
            self.slots.append(slot)
            self.masked_left -= len(labels)
            for t in labels:
                self.counts[t] = self.counts.get(t, 0) - 1
        if last:
            return _Rest(None)
        self.rank, self.rest = r, trial
        if set(trial) != set(self.names):  # per-tensor scales: only layer 1 can be subtracted
            self.names, self.word, self.position_table = list(trial), None, None
        allowed = None
        if self.word:
            rows = self.rest[self.word].norm(dim=1)
            top = float(self.grads[self.word].double().norm(dim=1).max())
            allowed = set((rows > 1e-6 * top).nonzero().flatten().tolist())
        span0 = lk.layer_span(left, 0) if lk.qkv_names(left, 0) else None
        positions = None
        if self.position_table and allowed:
            lengths = list(self.lengths)
            for s in self.sentences:
                lengths.remove(len(s))
            positions = lk.token_positions(self.model, left, sorted(allowed), max(lengths),
                                           _occupants(lengths) if self.known_lengths else None)
        return _Rest(span, allowed, span0 if span0 is not None and span0.exact else None, positions)

    def _choices(self, seq: list[int]):
        """(slot, labels) to try, likeliest first."""
        if self.task != "mlm":
            yield from ((None, c) for c in range(int(self.model.config.num_labels)))
            return
        masks = {p for p, t in enumerate(seq) if t == self.mask_id}
        seen: list[list[int]] = []
        for b, (n, pos) in enumerate(zip(self.lengths, self.positions)):
            if b in self.slots or n != len(seq) or not masks <= set(pos) or pos in seen or not pos:
                continue
            seen.append(pos)
            ranked = self._ranked_tokens(seq, pos)
            first = [r[0] for r in ranked]
            yield b, first
            for i, r in enumerate(ranked):  # one position's runner-up at a time
                if len(r) > 1:
                    yield b, first[:i] + [r[1]] + first[i + 1:]

    def _own(self, seq: list[int], slot, labels) -> tuple[torch.Tensor, ...]:
        ids = torch.tensor([seq])
        if self.task == "mlm":
            target = torch.full_like(ids, -100)
            target[0, self.positions[slot]] = torch.tensor(labels)
            share = len(labels) / self.masked  # the loss averages over the whole batch's masked positions
        else:
            target, share = torch.tensor([labels]), 1.0  # the share is fitted (`ShareFit`)
        with torch.enable_grad():
            loss = self.model(input_ids=ids, attention_mask=torch.ones_like(ids),
                              token_type_ids=torch.zeros_like(ids), labels=target).loss
            return torch.autograd.grad(loss * share, [self.params[n] for n in self.names])

    def _ranked_tokens(self, seq: list[int], pos: list[int], keep: int = 2) -> list[list[int]]:
        """Per masked position, the `keep` leaked tokens whose term best reduces the rank of
        the transform gradient left."""
        cand = [t for t, c in self.counts.items() if c > 0] or list(self.counts)
        A = self.rest[self.dense]
        U, S, Vh = torch.linalg.svd(A, full_matrices=False)
        r = max(1, min(self.masked_left, len(S)))
        U, S, V = U[:, :r], S[:r], Vh[:r].T
        ids = torch.tensor([seq])
        with torch.no_grad():
            h = self.model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                      token_type_ids=torch.zeros_like(ids)).last_hidden_state[0, pos]
        expected, per_token = _head_label_terms(self.model, self.dense, h, cand)
        d = (expected[None] - per_token) / self.masked  # [candidates, k, H]: dL/dpre_j were the label v
        left = (h.double() @ V) / S  # h_j^T A^+ = h_j^T V S^-1 U^T
        coef = d @ U  # [candidates, k, r]
        inside = (coef * left[None]).sum(-1)
        outside = (d - coef @ U.T).norm(dim=-1) / d.norm(dim=-1).clamp_min(1e-300)
        scores = ((inside - 1).abs() + outside).T  # [k, candidates]
        order = torch.argsort(scores, dim=1)[:, :keep]
        return [[cand[j] for j in row] for row in order.tolist()]


def _head_label_terms(model, dense_name: str, h: torch.Tensor, tokens: Sequence[int]
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """For hidden states h [k, H] entering the masked-LM head (whose transform is `dense_name`'s
    module): J^T p [k, H] and J^T e_v for each of `tokens` [len(tokens), k, H], in double, where J
    is the logits' Jacobian in the transform's pre-activation; the cross-entropy gradient there,
    label v, is J^T p - J^T e_v."""
    transform = model.get_submodule(dense_name[: -len(".dense.weight")])
    with torch.enable_grad():
        pre = transform.dense(h.float()).detach().requires_grad_()
        logits = model.get_output_embeddings()(transform.LayerNorm(transform.transform_act_fn(pre)))
        probs = logits.softmax(-1).detach()
        expected = torch.autograd.grad((probs * logits).sum(), pre, retain_graph=True)[0].double()
        per_token = torch.stack([torch.autograd.grad(logits[:, v].sum(), pre, retain_graph=True)[0].double()
                                 for v in tokens])
    return expected, per_token


def _occupants(lengths: Sequence[int]) -> list[int]:
    """How many sentences reach each position."""
    return [sum(n > i for n in lengths) for i in range(max(lengths))]


def _as_captured(values: dict[str, torch.Tensor], grads) -> dict[str, torch.Tensor]:
    """Back to the shared gradient's dtype: the span's noise floor is set by its precision."""
    return {n: v.to(grads[n].dtype) for n, v in values.items()}


def _word_trials(model, span1, free, seq: list[int], ends: bool, pieces: set[int], worst: int) -> list[list[int]]:
    """`seq` with each continuation piece as the last piece of a word of two to four pieces ending
    at one of the `worst` positions (highest layer-1 residual in context), the pieces before it
    re-chosen in context: the first one past the gap first (it ranks well once the word's end is
    there), then the middle ones."""
    inner = range(1, len(seq) - 1) if ends else range(len(seq))
    profile = lk.position_residuals(model, span1, seq)
    worst_at = [q for q in torch.argsort(profile, descending=True).tolist() if q in inner][:worst]
    trials: list[list[int]] = []
    for q in worst_at:
        last = [c for c in free(q, len(seq)) if c in pieces and c != seq[q]]
        if not last:
            continue
        base = torch.tensor(seq).repeat(len(last), 1)
        base[:, q] = torch.tensor(last)
        for k in (1, 2, 3):  # pieces before the last one
            if q - k not in inner:
                continue
            rows = base.clone()
            for j in range(q - k, q):
                options = torch.tensor(free(j, len(seq)))
                # each piece sees the pieces chosen before it and, past the unfilled ones, the last
                scores = lk.slot_residuals(model, span1, rows[:, :j], options, rows[:, q:], suffix_at=q)
                rows[:, j] = options[scores.argmin(1)]
            trials += rows.tolist()
    return trials


def _substitutions(model, span1, seq: list[int], p: int, options: list[int]
                   ) -> tuple[list[list[int]], torch.Tensor | None]:
    """`seq` with each of `options` at position p, and each one's whole-sentence residual."""
    trials = [seq[:p] + [t] + seq[p + 1:] for t in options]
    return trials, (lk.sequence_residuals(model, span1, trials) if trials else None)


def _best(model, span1, seq: list[int], p: int, options: list[int], top: int) -> list[int]:
    """The `top` tokens at position p that leave the lowest whole-sentence residual alone."""
    _, scores = _substitutions(model, span1, seq, p, options)
    return [options[i] for i in torch.argsort(scores)[:top].tolist()]


def _slots_by_masks(sequences: list[list[int]], positions: list[set[int]], mask_id: int,
                    fixed: dict[int, int] | None = None) -> list[int]:
    """For each slot, the index of the sentence (of the slot's length) whose [MASK] positions
    best agree with the slot's declared ones; `fixed` slots (slot -> sentence) are kept."""
    fixed = fixed or {}
    free_ = [i for i in range(len(sequences)) if i not in fixed.values()]
    order = []
    for b, want in enumerate(positions):
        if b in fixed:
            order.append(fixed[b])
            continue
        same = [i for i in free_ if len(sequences[i]) == len(sequences[b])] or free_
        have = {i: {p for p, t in enumerate(sequences[i]) if t == mask_id} for i in same}
        i = max(same, key=lambda i: (len(have[i] & want) - len(have[i] ^ want), -abs(i - b)))
        order.append(i)
        free_.remove(i)
    return order


def _cuts(seq: list[int], lengths: Sequence[int], ends: bool, sep_id) -> list[list[int]]:
    """`seq` cut to each of `lengths` below its own (closed by [SEP] where sentences have ends)."""
    return [seq[:m - 1] + [sep_id] if ends else seq[:m] for m in sorted(set(lengths)) if m < len(seq)]


def _shifted(seq: Sequence[int], ends: bool) -> list[list[int]]:
    """`seq` with 1-3 tokens inserted (copies of the token there, for settling to replace) or
    deleted at one position, kept at its length by trimming or padding the far end."""
    head, body, tail = ([seq[0]], list(seq[1:-1]), [seq[-1]]) if ends else ([], list(seq), [])
    n, out = len(body), []
    for a in range(n):
        for k in (1, 2, 3):
            grown = body[:a] + [body[a]] * k + body[a:]
            shrunk = body[:a] + body[a + k:]
            out += [grown[:n], grown[k:], (shrunk + body[-1:] * k)[:n], (body[:1] * k + shrunk)[-n:]]
    variants = []
    for b in out:
        v = head + b + tail
        if len(b) == n and v != list(seq) and v not in variants:
            variants.append(v)
    return variants


def _resembles(prefix: Sequence[int], stem: Sequence[int], *, shortest: int = 6, share: float = 0.8) -> bool:
    """Whether `prefix` holds, in order, at least `share` of its tokens from `stem`."""
    if len(prefix) < shortest:
        return False
    row = [0] * (len(stem) + 1)
    for a in prefix:  # longest common subsequence, one row at a time
        prev_diag = 0
        for j, b in enumerate(stem, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if a == b else max(row[j], row[j - 1])
    return row[-1] >= share * len(prefix)


def _follows(prefix: Sequence[int], stem: Sequence[int], *, shortest: int = 4) -> bool:
    """Whether `prefix` (of at least `shortest` tokens) retraces `stem` on all but one of their
    common tokens: a found sentence's own prefixes, or the sentence grown past its end."""
    common = min(len(prefix), len(stem))
    return len(prefix) >= shortest and sum(a != b for a, b in zip(prefix[:common], stem)) <= 1
