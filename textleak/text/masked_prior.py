"""A masked-LM prior over the attack model's own frozen encoder: which tokens fit masked positions
of a guess, given the whole guess around them (`ContextHead`).

Why: the `likelihood` search's missing stretches are function words whose embedding rows are
buried in noise, and the bigram prior (`text.prior`) sees only each slot's two neighbours, which in
a wrong stretch are wrong too. A masked LM reads the whole sentence. The packaged MiniLM's
checkpoint has no trained masked-LM head, so one is fitted here on its frozen last hidden states:
logits = LayerNorm(gelu(dense(h))) @ E^T + b, E the model's word embeddings (tied, frozen), on
span-masked sentences of the training splits the bigram uses (train_*.tsv, never the attacked dev
sentences), and cached under ~/.cache/textleak keyed by the files, the tokenizer and the weights.

Measured (MiniLM, scratch scripts, session 16): fitted on 23,769 training sentences (8,000 per
file) -> 104,000 masked positions (20% of each sentence's tokens, spans of 1-4), 3,000 held out:
top-1 6.9%, top-10 27%, top-50 44% after 3 epochs (6.3 / 26 / 43% after 1); other layers' states
(2, 3 or 5, or all six concatenated; 7,500 sentences, 2 epochs) did no better (5.8-6.5 / 26-27%):
the sentence-embedding fine-tune left little token prediction to read. Weak alone (RT dev sentence
0 at variance 1e-6: "how" ranks 119th-238th), but independent of the gradient's evidence
(`attacks.evidence.context_candidates` combines them). The defaults here (6,000 per file, 2
epochs) took 200 CPU s to fit once (load ~3); a lookup is one encoder pass (~10 ms at 22 tokens).

Shapes: sequences are token-id lists; log-probabilities [masked positions, V].
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from ..errors import InputError
from .prior import cache_dir, prior_files, read_cached, training_texts, write_cached

#: the head's training: sentences per file (at least 4 words), the share of tokens masked (spans of
#: 1..SPAN), epochs, batch, peak learning rate (one-cycle Adam)
SENTENCES, MASKED, SPAN, EPOCHS, BATCH, LR = 6000, 0.2, 4, 2, 256, 2e-3


class ContextHead:
    """A masked-LM head over a layout's frozen encoder (`fit` trains one; `load_context_head`
    caches it)."""

    def __init__(self, layout, mask_id: int, state: dict[str, torch.Tensor]):
        self.layout, self.mask_id = layout, int(mask_id)
        H = layout.hidden_size
        self.dense = torch.nn.Linear(H, H)
        self.norm = torch.nn.LayerNorm(H)
        self.bias = torch.nn.Parameter(torch.zeros(layout.word_embeddings.num_embeddings))
        if state:
            self.load_state(state)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [*self.dense.parameters(), *self.norm.parameters(), self.bias]

    def state(self) -> dict[str, torch.Tensor]:
        return {"dense.weight": self.dense.weight.detach().clone(), "dense.bias": self.dense.bias.detach().clone(),
                "norm.weight": self.norm.weight.detach().clone(), "norm.bias": self.norm.bias.detach().clone(),
                "bias": self.bias.detach().clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            self.dense.weight.copy_(state["dense.weight"])
            self.dense.bias.copy_(state["dense.bias"])
            self.norm.weight.copy_(state["norm.weight"])
            self.norm.bias.copy_(state["norm.bias"])
            self.bias.copy_(state["bias"])

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        E = self.layout.word_embeddings.weight.detach().float()
        return self.norm(F.gelu(self.dense(h.float()))) @ E.T + self.bias

    def states(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.layout.hidden_states(ids.to(self.layout.device), mask).float().cpu()

    def log_probs(self, seq: Sequence[int], groups: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Per group of positions, `seq` with those positions masked together: log p [len(group), V]
        at each of them (one encoder pass for all groups)."""
        if not groups:
            return []
        x = torch.tensor([list(seq)] * len(groups))
        for r, group in enumerate(groups):
            x[r, list(group)] = self.mask_id
        h = self.states(x)
        with torch.no_grad():
            return [torch.log_softmax(self.logits(h[r, list(group)]), -1) for r, group in enumerate(groups)]

    def fit(self, sentences: Sequence[Sequence[int]], *, epochs: int = EPOCHS, seed: int = 0) -> dict[str, float]:
        """Trains the head on `sentences` (token ids, [CLS] .. [SEP]) span-masked (`MASKED` of each
        body in spans up to `SPAN`); returns the loss and top-10 rate on a held-out tenth."""
        H, Y = self._examples(sentences, random.Random(seed))
        gen = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(Y), generator=gen)
        held, train = perm[: max(1, len(Y) // 10)], perm[max(1, len(Y) // 10):]
        with torch.no_grad():
            torch.nn.init.eye_(self.dense.weight)
            self.dense.bias.zero_()
        opt = torch.optim.Adam(self.parameters(), lr=LR)
        steps = max(1, epochs * max(1, len(train) // BATCH))
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, LR, total_steps=steps)
        for _ in range(epochs):
            order = train[torch.randperm(len(train), generator=gen)]
            for s in range(0, max(1, len(order) - BATCH + 1), BATCH):
                b = order[s:s + BATCH]
                loss = F.cross_entropy(self.logits(H[b]), Y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            lg = self.logits(H[held])
            rank = (lg > lg.gather(1, Y[held, None])).sum(1)
            return {"loss": float(F.cross_entropy(lg, Y[held])), "top10": float((rank < 10).float().mean()),
                    "examples": len(Y)}

    def _examples(self, sentences, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        """(states [N, H], targets [N]) at the masked positions of every sentence (cut to 64 tokens, or
        fewer where the model has fewer positions), by length in chunks of 64."""
        longest = min(64, self.layout.position_embeddings.num_embeddings - self.layout.position_offset)
        seqs = sorted((list(s)[:longest] for s in sentences if len(s) >= 4), key=len)
        H, Y = [], []
        for a in range(0, len(seqs), 64):
            chunk = seqs[a:a + 64]
            L = max(map(len, chunk))
            x, am = torch.zeros(len(chunk), L, dtype=torch.long), torch.zeros(len(chunk), L, dtype=torch.long)
            where = []
            for r, seq in enumerate(chunk):
                n = len(seq)
                x[r, :n], am[r, :n] = torch.tensor(seq), 1
                for p in _spans(n, rng):
                    where.append((r, p, seq[p]))
                    x[r, p] = self.mask_id
            h = self.states(x, am)
            rows, cols, ys = zip(*where)
            H.append(h[list(rows), list(cols)])
            Y.append(torch.tensor(ys))
        return torch.cat(H), torch.cat(Y)


def _spans(n: int, rng: random.Random) -> set[int]:
    """Positions 1..n-2 to mask: spans of 1..`SPAN` until `MASKED` of the body is covered."""
    body = n - 2
    want, out = max(1, round(MASKED * body)), set()
    while len(out) < want:
        w = rng.randint(1, SPAN)
        a = rng.randint(1, max(1, n - 1 - w))
        out |= set(range(a, min(a + w, n - 1)))
    return out


def training_sentences(tokenizer, files: Sequence[str], per_file: int = SENTENCES, seed: int = 0) -> list[list[int]]:
    """Up to `per_file` sentences of at least 4 words from each TSV (first column), token ids."""
    rng, texts = random.Random(seed), []
    for path in files:
        pick = [t for t in training_texts(path) if len(t.split()) >= 4]
        rng.shuffle(pick)
        texts += pick[:per_file]
    return tokenizer(texts)["input_ids"] if texts else []


_HEADS: dict[tuple, ContextHead] = {}


def load_context_head(target: Any) -> ContextHead:
    """The context head of `target` (model and tokenizer) fitted on the training TSVs
    ($TEXTLEAK_PRIOR_DATA, default train_*.tsv in the shared data folder, as the bigram), read from
    the disk cache or fitted once and cached (per process too); a fit says so on stderr (a line
    before, one after). The search calls this from its `prepare` (`attacks.base.prepare`), before
    an attack's time budget starts."""
    from .layouts import layout_for

    tok, layout = target.tokenizer, layout_for(target.model)
    files = prior_files()
    weights = getattr(getattr(target, "spec", None), "weights_hash", "") or \
        str(float(layout.word_embeddings.weight.detach().double().sum()))
    settings = (SENTENCES, MASKED, SPAN, EPOCHS, BATCH, LR)
    key = hashlib.sha256(("|".join(files) + tok.name_or_path + str(len(tok)) + weights + str(settings)
                          ).encode()).hexdigest()[:16]
    if (key, id(target.model)) in _HEADS:
        return _HEADS[(key, id(target.model))]
    cache = cache_dir() / f"context-head-{key}.pt"
    head = ContextHead(layout, tok.mask_token_id, {})
    cached = read_cached(cache, tuple(head.state()))
    if cached is not None:
        head.load_state(cached)
    else:
        sentences = training_sentences(tok, files)
        if not sentences:
            raise InputError("the context head found no training sentences of 4 words or more; set "
                             "TEXTLEAK_PRIOR_DATA to a glob of TSV files (sentence<TAB>label) or likelihood.context to 0")
        print(f"textleak: fitting the context head (likelihood.context) on {len(sentences)} training sentences, "
              f"once per model (~200 CPU s for MiniLM); cached at {cache}", file=sys.stderr, flush=True)
        t0 = time.process_time()
        with torch.random.fork_rng():
            head.fit(sentences)
        print(f"textleak: context head fitted ({time.process_time() - t0:.0f} CPU s)", file=sys.stderr, flush=True)
        write_cached(cache, head.state())
    _HEADS[(key, id(target.model))] = head
    return head


def context_head(target: Any) -> tuple[ContextHead | None, str]:
    """(`load_context_head`'s head, "") or (None, why none can be had): the tokenizer has no mask
    token, or there are no training sentences to fit one on (`load_context_head`'s InputError). The
    `likelihood` search then runs without context candidates and says why in its result
    (details["context"]), as `auto` runs without the bigram prior where it has no sentences."""
    if getattr(target.tokenizer, "mask_token_id", None) is None:
        return None, "the tokenizer has no mask token"
    try:
        return load_context_head(target), ""
    except InputError as exc:
        return None, str(exc)
