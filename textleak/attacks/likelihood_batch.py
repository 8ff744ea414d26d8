"""`likelihood_batch`: the `likelihood` search (`attacks.likelihood`) for a noisy classification
gradient of several sentences: which sentence a token the embedding rows show belongs to is
decided on the likelihood of the whole batch, and every sentence gets its share of the time.

Threat model, arguments and objective as `likelihood` (the Gaussian likelihood of the shared
gradient G = (1/B) sum_i g(x_i, y_i) + N; lengths declared; labels known or their counts read off
the classifier bias). Changing sentence i with the others fixed changes the batch's misfit
||B G - sum_j g(x_j)||^2 by minus the change of J_i (`likelihood`'s per-sentence term, with
target T_i = B G - sum_{j != i} g(x_j)), so coordinate ascent sentence by sentence climbs the
likelihood of the whole batch; what the batch needs beyond `likelihood`:

- Ownership. At batch B the word-embedding row of a token is the gradient at its one position in
  its one sentence, but a position's row sums that position over all B sentences: the rows tell
  a token's position, not its sentence (CoLA dev batch 0 of 4 at variance 1e-6: "sarah",
  "susan", "smoke", "kissed", "ballad", "bill", "trouble" stand 5-16 noise deviations above the
  null at their positions; every layer-0/1 singular value is below the noise's Marchenko-Pastur
  edge, so no span test helps). Climbed one sentence at a time from fillers, the first sentence
  takes the strong tokens of the others (same batch, 30 CPU s each: "sarah kissed dissent smoke
  dub" for "sarah sang a ballad.", which its climb with the other three at the truth reads exactly
  in 37 CPU s). Here every sentence starts as its likeliest filler (`evidence.FILLERS`) and the
  tokens whose row at their best position stands `strong` deviations above the null
  (`evidence.confidence`'s scale) are placed, strongest first, each where it raises the batch
  likelihood most (or nowhere). That choice is weak: against fillers, sentences of one length are
  interchangeable and the gains differ by a few percent (3 of the 7 tokens above land in their
  own sentence); placed by the truth instead, the same search reads the batch at ROUGE-1 0.65
  (0.17 as placed here, 300 s budget, load 5-6). Which sentence a token belongs to is what
  batch 4 still lacks (the cosine of a token's predicted and observed word row picks its owner
  for all 7 tokens when the other positions hold the true sentences, and for none among fillers,
  where it differs by at most 0.06 between sentences). Nor do the last layer's per-sentence
  sites (`text.leaks.sentences`) decide it (s22, recipes/measured/noise_b4_s22): their four terms
  are nearly parallel, only the common direction clears the noise edge (pooler s2 0.008 against
  0.157 on B G), and among fillers a score with the other sentences left free (rank B-1) places 3
  of the 7 tokens, as J does; the truth's placement is 4.8k nats less likely than this greedy one.
- Time. `likelihood` gives each sentence's climb a share of all the time left (at batch 1 the
  whole); here each round splits what is left evenly over the sentences still to climb, so the
  last sentence is not starved (`auto` at main 6622a12 spent its 600 s on CoLA batch 4 and read
  0.19 and 0.23; this search 0.34 and 0.45, same budget and load: recipes/measured/
  fl_defences_noise1e-6_b4_s11.md).
- Exchanges. After a round, the tokens at one position (with `block` > 1: a span of up to
  `block` positions) of two sentences are swapped (two exact coordinate steps, kept only if
  together they raise the batch likelihood; `swaps` per pair).

Arguments (besides `likelihood`'s): `strong` (z of a placed token), `rounds` (passes over the
batch, each splitting the time left), `exchanges` (swap passes after each round), `swaps`, `block`,
`pin` (placed strong tokens keep their positions), `context` (masked-LM candidates per climb),
`relabel` (labels read as counts placed by the likelihood), `early`, `early_layers` (first rounds on the
early layers alone), `place_labels` (the start built under every placement of the counts), `stand_in` (training
sentences whose mean gradient stands for a sentence not yet climbed), `share_power` (each sentence's share of a
round's time by its length), `relocate` (whole sentences exchanged between slots of different lengths, after every
round or, "last", once after the last; `relocate_fill`: each slot offered its fillers too), `late_context`, `reseat`,
`place_layers` (the strong rows placed on the first layers' J; `likelihood_place`),
`runs` (`likelihood`'s whole-run proposals, here in the climbs after the `early` rounds).
In `auto` it runs before `likelihood` (which goes on from its guess with the time left; the
likelier guess by misfit is kept) and refuses a single sentence.
Shapes: as `likelihood` (token-id lists of the declared lengths).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch

from ..core.budget import current, time_budget
from ..errors import MissingKnowledgeError
from ..threat import Observation
from ..validate import integer
from .base import ATTACKS, AttackOutput
from .evidence import ContextCandidates, candidates, filler_ids, row_scores, strong_rows
from .likelihood import LikelihoodSearch
from .likelihood_exchange import Exchanges
from .likelihood_relocate import Relocations, enclosing, relocation
from .likelihood_reseat import Reseats
from .likelihood_standin import stand_ins
from .likelihood_place import Placements
from .likelihood_state import _Batch, clip_norm


@ATTACKS.register("likelihood_batch")
@dataclass
class BatchLikelihoodSearch(LikelihoodSearch, Exchanges, Relocations, Reseats, Placements):
    name: ClassVar[str] = "likelihood_batch"

    #: a token whose row stands this many noise deviations above the null at its best position is placed
    strong: float = 5.0
    rounds: int = 4
    exchanges: bool = True
    #: same-position swaps completed per pair of sentences and exchange pass (the first step's best)
    swaps: int = 3
    #: widest span of positions exchanged at once (1: one position, the default). A token keeps its
    #: position and its neighbours go with it (s22, CoLA dev batch 0 of 4 at variance 1e-6: the end
    #: state of `auto` takes 9 of 92 span swaps, the best of width 4). On/off at 4 (600 s, both arms
    #: at once; recipes/measured/noise_b4_s22): CoLA 0 / 1 up both rounds (0.57 / 0.52 against 0.45
    #: / 0.46 at 160-340 CPU s), SST-2 0 down both (0.13 against 0.23: its 44-token sentence's spans
    #: take the climbs' time), RT 0 split; off
    block: int = 1
    #: keep every placed strong-row token at its row position (`_Guess.pins`: a hypothesis moving it scores
    #: -inf, sweeps skip it); an exchange may carry it to another sentence at the same position. Why: the
    #: row says where the token stands, not in which sentence; at the end of `auto` on CoLA dev batch 0 at
    #: 1e-6 (session 25, two runs) 4 of the 7 strong tokens sat at other positions than their rows'
    #: (z 5-12), "she has kissed her." assembled 2 places late in another sentence's slot. On/off side by
    #: side at 600 CPU s: CoLA dev batch 0 0.307 / 0.260 (shifted strong tokens 4 -> 1, but owner errors
    #: 1 -> 6 tokens); the defaults read 0.427 and 0.260 in two runs of that batch; SST-2/RT unmeasured: off
    pin: bool = False
    share: float = 0.9
    #: masked-LM candidates for each sentence's climb (`likelihood.context`; with them `blocks` and `deep`
    #: act as at batch 1); 0: none, so no head is fitted (`prepare`). Built here since session 25; 4 against
    #: 0 at 600 CPU s (recipes/measured/noise_b4_s25): SST-2 dev batch 0 0.332 / 0.154 side by side, CoLA
    #: dev batch 0 0.242 / 0.427 (5 min apart). Mixed: off. Ground truth there: from SST-2's end state each
    #: sentence's truth is likelier than its guess (a search failure the candidates address), from CoLA's
    #: less likely (the sentences' head gradients compensate each other: better candidates cannot help)
    context: int = 0
    #: labels read as counts (not known) on a binary classifier with both classes in the batch: every
    #: hypothesis is scored at its likelier label and a guess takes it (`_Guess.free`: a label flips the sign
    #: of a sentence's whole gradient), and after each round the counts go where the batch likelihood puts
    #: them (`_Batch.assign`); labels are free only in the `early` rounds (at least one), where the head,
    #: which ties the sentences' labels to the counts, weighs nothing. Why: the counts are assigned in order,
    #: so SST-2 dev batch 0 (labels 0 1 0 0, read 0 0 0 1) climbed two of its four sentences at the wrong
    #: label, whose every gradient has the other sign; the truth at those labels is 324k nats less likely
    #: than at its own (session 26, recipes/measured/noise_b4_s26). On/off side by side at 600 CPU s: SST-2
    #: dev batch 0 0.350 / 0.094 (whether its labels moved is not recorded: the gain may be its early round's),
    #: SST-2 dev batch 1 0.202 / 0.273. Mixed: off
    relabel: bool = False
    #: rounds (the first ones) that climb J_w of the embeddings and the first `early_layers` encoder layers
    #: alone, the later layers and the head at weight 0 (with `relabel`: at least one). Why: the head's
    #: gradients of the B sentences are nearly parallel (s22), so it couples them: at CoLA dev batch 0's end
    #: state one sentence's truth alone is 69k-81k nats less likely, 90% of it in the head (s25); at SST-2
    #: dev batch 0's truth with the other three at the in-order labels, embeddings + layers 0-3 prefer each
    #: sentence's true label (4 of 4), the whole J 2 of 4 (session 26, noise_b4_s26/diag_labels_enc). On/off
    #: side by side at 600 CPU s: CoLA dev batch 0 0.660 / 0.208 ("she has kissed her.", "sarah sang a ballad,"
    #: read; the defaults read 0.26-0.43 in s25). Session 27 pairs (noise_b4_s27): SST-2 dev batch 0 0.264 / 0.098,
    #: SST-2 1 0.334 / 0.131, CoLA 1 0.328 / 0.409 (a loss: the continuation's guess was less likely, the
    #: batch's kept), RT 0 0.319 / 0.282. Four wins of five, mean +0.16; the loss (-0.08) is inside the 0.17
    #: spread of one batch's default runs (s25): on since session 27 (an audit must not understate the leak)
    early: int = 1
    early_layers: int = 4
    #: labels read as counts (not known), the batch holding two classes or more: "order" (the counts assigned
    #: in order, as read); "first": the start (each sentence's filler, then the strong rows) built under every
    #: distinct placement of the counts (`likelihood_state.placements`), the likeliest by the batch misfit kept;
    #: "rounds": that, and after every round the counts put where the batch likelihood puts them
    #: (`_Batch.assign`, the guesses as they stand). Why: in order, SST-2 dev batch 0 (labels 0 1 0 0, read
    #: 0 0 0 1) climbed two sentences at the wrong label, whose every gradient has the other sign (session 26).
    #: But the start does not tell the labels: built under every placement (session 27, noise_b4_s27/
    #: diag_start_labels, ~30 CPU s a batch) the truth is the least likely of 4 on SST-2 dev batches 0 and 1
    #: (+20,907 / +8,979 nats) and second on RT dev batch 1 (+469): "first" keeps a wrong placement on all
    #: three. Off; no end-to-end pair run. "carry" (session 28): the start in order, and after each `early` round
    #: every placement tried with the guesses carried with their labels (`likelihood_state.carried`: content
    #: follows its label's slot, so a slot losing label y hands its guess to one gaining y, cut or padded to
    #: that slot's length), the likeliest by the batch misfit kept. Pair at 600 CPU s, SST-2 dev batch 0: 0.142 (labels
    #: placed 0100, the truth) / 0.194 (read 0001); after the early round the guesses hold too little to carry, and
    #: from scratch the true labels alone read 0.164 (recipes/measured/noise_b4_s28): off
    place_labels: str = "order"
    #: training sentences per declared length whose mean gradient (`likelihood_standin.stand_ins`) stands for a
    #: sentence in the others' targets until it is climbed in each of the first `early` + 1 rounds; 0: none (its
    #: guess stands for it). Pair at 600 CPU s, 16 against 0 (noise_b4_s29): SST-2 dev batch 0 0.339 / 0.312, CoLA 0
    #: 0.654 / 0.512, ROUGE-2 down in both, all inside one batch's run-to-run spread: off
    stand_in: int = 0
    #: each round's time split over its sentences in proportion to (tokens inside the sentence)^`share_power`, each
    #: climb taking its weight's part of what is left to the sentences still to climb in that round; 0: evenly, 1:
    #: by its tokens, < 0: the short sentences favoured. Pairs at 600 CPU s, 1 against 0 (noise_b4_s30): SST-2 dev
    #: batch 0 0.219 / 0.308, CoLA 0 0.575 / 0.535, SST-2 1 0.249 / 0.191: inside one batch's spread: off
    share_power: float = 0.0
    #: after each round's climbs, every pair of slots of different declared lengths exchanges its contents, each
    #: fitted to the other's length, where that lowers the batch misfit (`likelihood_relocate`). Why: at the end of
    #: `auto` on CoLA dev batch 0 of 4 at 1e-6 (sessions 29-30) "she has kissed her." stood in the 9-token slot of
    #: "I don't want trouble.", garbage in its own 7-token slot, and no token-level move carries a sentence across
    #: slots; where the labels were read as counts, also with the labels carried with the contents. True: after
    #: every round (s32 pairs, noise_b4_s32: CoLA 0 0.622 / 0.606 at 600 CPU s, CoLA 1 0.438 / 0.580 and SST-2 0
    #: 0.092 / 0.174 at 300: while the guesses are garbage it moves fragments); "last": once, after the loop's
    #: last round (its exchanges too), where the sentences are formed, stopped only by the enclosing deadline
    #: (the stage's own is spent by then), so that the `likelihood` continuation climbs from it; False: never.
    #: "last" against False at 300 CPU s, both arms at once (session 33, noise_b4_s33): CoLA dev batch 0 0.594 /
    #: 0.544 (2 of 4 exact / 1), CoLA 1 0.464 / 0.461, SST-2 0 0.254 / 0.127 (the label-1 sentence moved with its
    #: label to its own slot; the labels end at the truth): no loss in three, so "last" is the default
    relocate: bool | str = "last"
    #: with `relocate`, each slot of a pair is offered its fillers (every inner token one `evidence.FILLERS` token)
    #: besides the other's contents: a slot that gives its sentence away need not take the other's fragments
    #: (s32: CoLA 1 at 300 CPU s, "john", "carried", "door" spread over slots of the wrong lengths); off
    relocate_fill: bool = False
    #: masked-LM candidates (this many a slot, the larger of it and `context`'s; `deep` in full J_w sweeps) in the last
    #: round's climbs; 0: none beyond `context`'s. Why: on SST-2 dev batch 0 (s33's defaults, 300 CPU s) the slots end
    #: with their true labels, yet 53 of 87 inner tokens are fillers, each slot's truth likelier by 2.6k-6.9k nats (s34,
    #: noise_b4_s34); the candidates hold 7 true tokens (k 4), 30 (k 64). Every round (`context`) lost CoLA 0 (s25)
    late_context: int = 0
    #: after the last round up to this many slots' contents permuted at once (`likelihood_reseat`); 0: off. On CoLA 1's
    #: end states every seating is 19k-155k nats less likely; it took nothing in three pairs (s35, noise_b4_s35)
    reseat: int = 0
    #: the strong rows placed at the start by their gain on J of the embeddings and the first N encoder layers alone
    #: (`likelihood_place`: on CoLA dev batch 0 at 1e-6 it groups the 7 row tokens by sentence, the whole J none);
    #: 0: the whole J. Off
    place_layers: int = 0

    def check_options(self) -> None:
        """The option values checked before any work (`validate.attack_instance`): `relocate`'s mode, `place_layers`
        a count >= 0, `likelihood`'s."""
        relocation(self.relocate)
        integer(self.place_layers, "option place_layers", minimum=0)
        LikelihoodSearch.check_options(self)

    def prepare(self, target: Any, observation: Observation | None = None, noisy: bool | None = None) -> None:
        """As `likelihood`'s, the masked-LM head fitted or read for `late_context` as for `context`."""
        k = max(self.context, self.late_context, int(self.runs > 0))  # `runs`: the masked LM's proposals
        LikelihoodSearch.prepare(replace(self, context=k), target, observation, noisy)

    def preflight(self, observation: Observation, target: Any) -> None:
        """As `likelihood`, for batches of two or more sentences (batch 1 is `likelihood`'s)."""
        lengths = observation.knowledge.seq_lengths
        if lengths is not None and len(lengths) < 2:
            raise MissingKnowledgeError("one sentence: the likelihood search itself applies")
        self._setting(observation, target)

    def _run(self, observation: Observation, target: Any) -> AttackOutput:
        t0, c0 = self._begin(), time.process_time()
        layout, lengths, level, labels, label_note, banned = self._read(observation, target)
        know, grads, tok = observation.knowledge, observation.gradients, target.tokenizer
        word, pos = layout.word_embedding_name, layout.position_embedding_name
        W, P = grads[word].double().cpu(), grads[pos].double().cpu()
        scores = row_scores(W, P, max(lengths), banned)
        self._all_context, context = ContextCandidates.of(target, scores, banned, max(self.context, self.late_context))
        self._run_context = ContextCandidates.of(target, scores, banned, 1)[0] if self._runs else None
        evidence = candidates(scores, lengths, self.per_position)
        specials = bool(know.special_tokens and tok.cls_token_id is not None and tok.sep_token_id is not None)
        inner = [range(1, n - 1) if specials else range(n) for n in lengths]
        fill = filler_ids(tok) or [int((~banned).nonzero()[0])]
        batch = _Batch(layout, grads, self._first_guess(tok, lengths, fill, specials), labels,
                       clip_norm(observation.metadata))
        relabel = bool(self.relabel and label_note != "known" and len(set(labels)) == 2
                       and getattr(target.model.config, "num_labels", 2) == 2)
        early = max(self.early, int(relabel))
        rows = strong_rows(scores, W, P, level.sigma, self.strong)
        batch, placed, tried, placing = self._start(batch, rows, inner, fill, labels, label_note)
        mode = self.place_labels if placing else None
        reassign, carry = relabel or mode == "rounds", mode == "carry"
        self._pin(batch, placed)
        history, exchanged, carried_to, relocated = [], 0, [], 0
        moves, counted = relocation(self.relocate), label_note != "known"
        means = stand_ins(batch, tok, lengths, self.stand_in, specials) if self.stand_in > 0 else []
        for r in range(self.rounds):
            # early rounds: J_w of the embeddings and first layers alone, labels free where they are relabelled
            self._keep, batch.free = (self.early_layers, relabel) if r < early else (None, False)
            changed = self._climb_round(batch, r, lengths, means if r <= early else [], evidence, banned, word,
                                       specials)
            if reassign:  # the counts where the likelihood puts them, the guesses as they stand
                changed += int(batch.assign(labels))
            elif carry and r < early and not current().expired():  # the counts placed, the content with them
                batch, moved, tried = self._carry(batch, labels, lengths, fill[0], specials)
                self._pin(batch, placed)
                changed, carried_to = changed + int(moved), carried_to + [batch.labels]
            if moves == "rounds" and not current().expired():  # whole sentences into the slots of their lengths
                moved = self._relocated(batch, inner, fill, counted, placed)["kept"]
                relocated, changed = relocated + moved, changed + moved
            if self.exchanges and not current().expired():
                moved = self._exchange(batch, inner, fill, {v for v, _, _ in rows})
                self._pin(batch, placed)  # a pinned token an exchange moved is pinned where it went
                exchanged, changed = exchanged + moved, changed + moved
            history.append(changed)
            if not changed or current().expired():
                break
        last = self._relocated(batch, inner, fill, counted, placed, enclosing(current())) if moves == "last" else None
        relocated += last["kept"] if last else 0  # "last": once, until the enclosing deadline
        reseat = self._reseated(batch, inner, fill[0], counted, placed, enclosing(current()))  # `reseat` > 1: on
        self._keep, batch.free = None, False
        return self._output(batch, grads, level, tok, know, label_note,
                            {"placed": [{"token": v, "sentence": i, "position": p} for v, i, p in placed],
                             "exchanged": exchanged, "relocated": relocated, "relocate_last": last, "reseat": reseat,
                             "labels_relocated": moves != "off" and batch.labels != labels,
                             "changes_per_round": history, "context": context, "relabel": relabel, "early": early,
                             "labels_read": labels, "runs": self._runs_taken if self._runs else None,
                             "labels_placed": mode, "placements": tried, "carried": carried_to,
                             "stand_in": [m is not None for m in means], "budget": current().describe(),
                             "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0})

    # -- pieces -------------------------------------------------------------------------------
    def _first_guess(self, tok: Any, lengths: list[int], fill: list[int], specials: bool) -> list[list[int]]:
        """The sentences the search starts from: fillers between [CLS] and [SEP], or `initial_ids`."""
        if self.initial_ids is not None:
            return [row[:n] for row, n in zip(torch.as_tensor(self.initial_ids).tolist(), lengths)]
        return [[tok.cls_token_id] + [fill[0]] * (n - 2) + [tok.sep_token_id] if specials else [fill[0]] * n
                for n in lengths]

    def _climb_round(self, batch: _Batch, r: int, lengths: list[int], means: list, evidence: list,
                     banned: torch.Tensor, word: str, specials: bool) -> int:
        """Round `r`'s climbs, one sentence after another, each on its share of what is left of the budget; the
        sentences not yet climbed stand as their training means (`means`, empty: they stand as they are).
        Returns the number of changes."""
        changed, w = 0, self._weights(lengths, specials)
        # the masked-LM candidates in every round (`context`), or in the last round alone (`late_context`)
        # (the rounds before the last at `context`'s k, none at 0; the last at the larger of it and `late_context`'s)
        early = self._all_context.with_k(self.context) if self._all_context and self.context else None
        self._context = self._all_context if r == self.rounds - 1 else early
        self._rebuild.context = self._context
        for i in range(len(lengths)):  # what is left, split over this round's sentences to climb and later rounds
            slice_ = current().remaining() * w[i] / ((self.rounds - r) * sum(w[i:]))
            # past the deadline (a stage before spent it) a token slice, never zero: the climb
            # finds it spent at its first check and the batch keeps its guess
            # a pinned position is left be by the sweeps (as batch 1's confident rows)
            self._sure = [batch.pins[i].get(p) for p in range(lengths[i])] if batch.pins else None
            # the sentences after i, not yet climbed this round, stand as their training mean (`stand_in`)
            batch.stand = [m if j > i else None for j, m in enumerate(means)] if means else None
            with time_budget(max(slice_, 1e-3) if math.isfinite(slice_) else None):
                n, _ = self._settle(batch, i, evidence[i], banned, word, specials)
            changed += n
            if current().expired():
                break
        batch.stand = None
        return changed

    def _weights(self, lengths: list[int], specials: bool) -> list[float]:
        """Each sentence's weight in its round's time (`share_power`): 1.0 each at 0, else (inner tokens)^power."""
        if not self.share_power:
            return [1.0] * len(lengths)
        return [float(max(1, n - 2 * specials)) ** self.share_power for n in lengths]

    def _pin(self, batch: _Batch, placed: list[tuple[int, int, int]]) -> None:
        """With `pin`, each placed token pinned at its position in the sentence holding it there (if any)."""
        if not self.pin:
            return
        batch.pins = [{} for _ in batch.seqs]
        for v, _, p in placed:
            holder = next((i for i, s in enumerate(batch.seqs) if p < len(s) and s[p] == v), None)
            if holder is not None:
                batch.pins[holder][p] = v
