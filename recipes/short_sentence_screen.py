"""How well short sentences can be screened on the last layer's sentence spans past the rank limit (#16).

Ground-truth diagnosis for `attacks.beyond_rank_screen` (it measures the landscape; the attack never
reads the truth). For each true sentence of at most --longest tokens of one batch:
- `ranks`: per inner position, the true token's rank among its position's candidates (the leaked
  token set narrowed by the placements) by layer-1 residual on the partial span (d40), with the rest
  of the true sentence as context (0: the best);
- `score`: `SentenceSpans.score` of the truth and of the truth with k random candidates (min/median
  of 20 draws): whether the sentence spans tell a true sentence from one a token off, and whether
  they rank partly wrong sentences (they screen; they do not guide);
- `screen`: one beam of --width over the lengths wanted (`exact.seeds.beam`), its best 2 x count x
  --seeds completions per length settled (`exact.seeds.settle`), seeds and settled screened with
  their neighbours (`NeighbourScreen`): the nearest distance of seeds and settled to each true
  sentence, and how many true and false sentences passed.

    python recipes/short_sentence_screen.py --data cola --batch-size 64 --longest 9 --seeds 4

Prints per sentence and writes JSON to --out.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from textleak.attacks.beyond_rank_screen import NeighbourScreen
from textleak.attacks.exact.seeds import beam, settle
from textleak.text.leaks import layer0_table, partial_span, sentence_spans, sequence_residuals, slot_residuals

from leaked_batch import leaked_batch  # recipes/: diagnosis setup shared with the other recipe


def in_context_ranks(search, seq: list[int]) -> list[int]:
    """Per inner position, the true token's rank by layer-1 residual with the rest of `seq` around it."""
    n, out = len(seq), []
    for p in range(1, n - 1):
        options = torch.tensor(search.free(p, n))
        scores = slot_residuals(search.layout, search.span1, torch.tensor([seq[:p]]), options,
                                torch.tensor([seq[p + 1:]]))[0]
        out.append(int((scores < scores[(options == seq[p]).nonzero()[0, 0]]).sum()))
    return out


def score_curve(search, seq: list[int], rng: random.Random) -> list[tuple[float, float]]:
    """(min, median) sentence-span score of `seq` with k = 0..4 random candidates in place of its tokens."""
    n, out = len(seq), []
    for k in range(min(4, n - 2) + 1):
        trials = []
        for _ in range(20):
            x = list(seq)
            for p in rng.sample(range(1, n - 1), k):
                x[p] = rng.choice([t for t in search.free(p, n) if t != seq[p]])
            trials.append(x)
        s = search.spans.score(search.layout, trials)
        out.append((round(float(s.min()), 2), round(float(s.median()), 2)))
    return out


def screen_lengths(search, truth: list[list[int]], longest: int, seeds: int) -> list[dict]:
    """Beam seeds, settled, screened (module doc), per length."""
    lengths = [len(s) for s in truth]
    wanted = {n: lengths.count(n) for n in set(lengths) if n <= longest}
    finished = beam(search, wanted, seeds)
    screen, rows = NeighbourScreen(), []
    dist = lambda pool, t: min(sum(a != b for a, b in zip(s, t)) for s in pool)  # noqa: E731
    for n in sorted(wanted):
        c0 = time.process_time()
        seeded = [s for _, s in sorted(finished[n], key=lambda x: x[0])][:2 * wanted[n] * seeds]
        settled = settle(search, [list(s) for s in seeded])
        passed = {tuple(x) for x in screen(search, seeded + settled)}
        true = [t for t in truth if len(t) == n]
        rows.append({"length": n, "true": len(true), "seeds": len(seeded),
                     "seed_distance": [dist(seeded, t) for t in true], "settled_distance": [dist(settled, t) for t in true],
                     "passed_true": len(passed & {tuple(t) for t in true}),
                     "passed_false": len(passed - {tuple(t) for t in truth}), "cpu_seconds": time.process_time() - c0})
        print(rows[-1], flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="cola")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--longest", type=int, default=9, help="longest sentence looked at (tokens)")
    ap.add_argument("--seeds", type=int, default=1, help="the beam's widening (`widen`: width 256 x this)")
    ap.add_argument("--out", default="results/short_sentence_screen.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    c0 = time.process_time()
    b = leaked_batch(args.data, args.batch_size, args.index)
    layout, grads, tok, truth, lengths, cands = b.layout, b.grads, b.tok, b.truth, b.lengths, b.cands
    span1 = partial_span([grads[n] for n in layout.qkv_names(1)], 1, 40)
    search = SimpleNamespace(config=SimpleNamespace(beam=4, trials=512, settle=10), layout=layout, span1=span1,
                             spans=sentence_spans(layout, grads, args.batch_size, "classify"), ends=True,
                             free=cands.free, found=[], missing=lengths, cls_id=tok.cls_token_id,
                             sep_id=tok.sep_token_id, residuals=lambda s: sequence_residuals(layout, span1, s))
    rng, per_sentence = random.Random(0), []
    with layer0_table(layout, max(lengths)):
        for seq in sorted((s for s in truth if len(s) <= args.longest), key=len):
            per_sentence.append({"length": len(seq), "text": tok.decode(seq[1:-1]),
                                 "ranks": in_context_ranks(search, seq), "score": score_curve(search, seq, rng)})
            print(per_sentence[-1], flush=True)
        screened = screen_lengths(search, truth, args.longest, args.seeds)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "batch_size": args.batch_size, "index": args.index,
                               "tokens": sum(lengths), "sentences": per_sentence, "screen": screened,
                               "cpu_seconds": time.process_time() - c0}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
