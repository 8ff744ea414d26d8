"""Exact recovery of text from the span of first-layer attention gradients (after DAGER,
Petrov et al., "DAGER: Exact Gradient Inversion for Large Language Models", NeurIPS 2024).

Threat model: honest-but-curious; the attacker holds the model and sees the gradients of the
first two encoder layers' query/key/value weights (BERT, RoBERTa, DistilBERT, ALBERT, ELECTRA
encoders: `textleak.text.layouts`). Labels and lengths are used when declared, otherwise
recovered / inferred from the gradient (and the result says so).

Why it works: a linear layer's weight gradient is sum_i delta_i x_i^T, so its row space is the
span of the layer's inputs x_i whenever the number of non-padding tokens B x L is below the hidden
size H (MiniLM: 384; where layers share their weights, as ALBERT's do, the span holds every
sharing layer's inputs and the bound is layers x B x L). Layer 0 receives
x = LayerNorm(E[token] + P[position] + T[0]) (projected, for factorised embeddings), so testing
every (token, position) candidate against the span (relative residual after projecting on the
right singular vectors; rank at the last clear singular-value drop; threshold at the widest gap of
the residuals) finds the input tokens. Because position embeddings are additive, a token seen at
one position can also pass at another: once the batch has more tokens than distinct tokens plus
positions (MiniLM, CoLA: about batch 8) the layer-0 span holds every (batch token, position)
pair, and layer 0 no longer tells positions apart. Where the word-embedding gradient is sparse
(untied heads: classification), it does: each occurrence's share of a word- and a
position-embedding row is orthogonal to its own LayerNorm input, which places every token that
stands at one position in the batch (`leaks.token_positions`; RT, batch 8: 117 candidates per
position become 17, for 5 true ones; recipes/token_positions.py). A tied masked-LM head writes a
rank-M span (M masked positions) to every row: the rows off it are still the input tokens
(`leaks.tied_token_set`: the vocabulary; the placements stay out of reach). Sentences are assembled at layer
1, whose input at a position depends on the whole sentence through attention: the whole-sentence
layer-1 residual is ~0 only for the true sentence (the certificate). Whole sentences of each
missing length are seeded (a cheap beam over prefixes, random draws) and settled: each token
re-chosen as the candidate with the least layer-1 residual in the context of the rest, until none
changes (`leaks.slot_residuals` scores a candidate in context for the cost of one token). Batches
are then peeled: a certified sentence's own gradient is subtracted from the batch's, which must
drop the layer-1 rank by what the sentence contributed (a second certificate), and the spans and
token set of the rest are read again; fewer sentences, fewer candidates. Its labels are those that
make the subtraction exact: a class (classification), or for masked-LM the declared masked
positions of a slot of its length and, per position, the leaked masked token whose term lowers the
rank of the prediction-head transform gradient (`peeling.Peeler`). Misses stalled on a word split
in pieces get word moves, misses that are true sentences out of place get shift moves, misses
that settled into a sentence of another length are cut or grown to the lengths still missing
(length moves); the search widens while it finds nothing. Masked-LM labels are finally solved per
masked position from the prediction-head transform gradient, classification labels from the
classifier's output weight gradient.

Degrades: with no rank gap (B x L >= H, or noise) the attack raises MissingKnowledgeError naming
the condition (past the rank limit, classification batches go to `attacks.beyond_rank`, which runs
this search on the partial span, certified by the last layer's per-sentence spans) (`Exact.preflight` says so before any work, as it does for an architecture without
a layout, UnsupportedModelError, and for Q/K/V gradients not shared); an assembly that does not
reach the certificate, or that the time budget (`textleak.core.budget`) cut short, is returned
with `details["certified"] = False` and its candidate sets, which `auto` hands to optimisation;
`details["budget"]` records the budget.

The package, one piece a module:
- `attack`: `Exact` (options, `preflight`, `run`: the algorithm in one screen);
- `candidates`: the vocabulary tested, per-position candidates and what narrows them;
- `search`: `Search`, the state of one assembly (span of what is left, candidates, found, missing,
  closest misses) with its rounds, `take` and the result;
- `seeds`: the beam over prefixes, random draws, settling;
- `moves`: word, shift, length and polish moves, registered in `MOVES`;
- `certificates`: what a sentence must pass to be accepted (layer-1 span; peel);
- `peeling`: `Peeler`, which subtracts a found sentence's own gradient;
- `labels`: labels of the sentences and, for masked-LM, their batch slots;
- `sequences`: pure helpers on token-id sentences (cuts, shifts, copies of found sentences).

Extension points (later work plugs in one small module each):
- a span test (noise-calibrated, sparse-error-tolerant): a function registered in
  `textleak.text.leaks.SPAN_TESTS`, chosen with `Exact(span_test=NAME)`;
- a move: a `moves.Move` subclass registered in `MOVES`, listed in `Exact(moves=(...))`;
- a certificate: a class with `admits(search, seq, residual)`, appended to `Search.certificates`;
- a leak that narrows candidates (dropout, clipping, padding): a module in `textleak.text.leaks`
  read in `Candidates.read` / `Candidates.narrow`;
- an architecture: a layout in `textleak.text.layouts`.

Arguments: `beam` (prefixes kept per sentence of the batch), `trials` (least candidates scored per
step), `restarts` (random seeds per missing length and round), `settle` (most passes when
settling a seed), `widen` (largest factor by which a round that finds nothing widens the next
one), `sweeps` (passes of the whole-sentence polish, the last resort), `moves` (the moves tried,
in order), `span_test` (how a layer's span is read), `seed`.
Shapes: layer span basis [H, r]; candidates: per position a list of (token id, residual).
Devices: the work runs on the model's device (CUDA when the model is there).
"""

from __future__ import annotations

from .attack import Exact
from .candidates import Candidates
from .certificates import Certificate, PeelCertificate, SpanCertificate
from .moves import MOVES, LengthMove, Move, PolishMove, ShiftMove, WordMove
from .peeling import Peeler, Rest
from .search import Search

__all__ = ["Exact", "Candidates", "Certificate", "PeelCertificate", "SpanCertificate", "MOVES", "Move",
           "LengthMove", "PolishMove", "ShiftMove", "WordMove", "Peeler", "Rest", "Search"]
