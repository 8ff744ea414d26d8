"""How well settling recovers a batch's true sentences past the rank limit, per partial span.

Each true sentence of one batch gets k of its inner tokens replaced by random candidates of their
positions (the candidates `beyond_rank` searches: the leaked token set narrowed by the token
placements); `exact`'s settle then re-chooses every token on its own layer-1 residual in context
against a partial layer-1 span. Counted: sentences settled back to the truth, and tokens left
wrong. Spans: `dN` (the best-effort span less its N weakest directions, `leaks.partial_span`) and
`sR` (every direction, weighted by lam^2 / (s^2 + lam^2) with lam the R-th singular value: a soft
cut), `sentence` (no settling: `beyond_rank.SentenceMove`, the best single-token change on the last
layer's sentence spans, repeated up to k + 1 times) and `x` (the layer-1 span with its rank gap, where it has one: after peels). This is what chose
`beyond_rank.SETTLE_DROP`. --peel K takes the K shortest sentences off first (the gradient of the
rest is the batch's less their own gradients, up to scale: it is captured directly), which is what
`beyond_rank` searches after K peels; this chose `beyond_rank_peel.EXACT_MARGIN`.

    python recipes/beyond_rank_settle.py --data rt --batch-size 16 --spans d10,d30,d60,s340 --k 6,10
    python recipes/beyond_rank_settle.py --data rt --batch-size 16 --index 1 --peel 1 --spans x,d40 --k 6
    python recipes/beyond_rank_settle.py --data rt --batch-size 16 --index 1 --spans sentence --k 1

Prints a table and writes JSON beside --out. Uses the ground truth (it measures the search's
landscape, not an attack).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from textleak.attacks.beyond_rank import SentenceMove
from textleak.attacks.exact.seeds import settle
from textleak.text.leaks import layer0_table, layer_span, partial_span, sentence_spans

from leaked_batch import leaked_batch  # recipes/: diagnosis setup shared with the other recipe


class SoftSpan:
    """Every direction of the layer-1 span, the weak ones counted: residual^2 = sum_i w_i (v_i . h)^2
    / |h|^2 with w_i = lam^2 / (s_i^2 + lam^2)."""

    layer = 1

    def __init__(self, singular: torch.Tensor, directions: torch.Tensor, lam: float):
        self.weighted = (directions * (lam ** 2 / (singular ** 2 + lam ** 2)).sqrt()).float()

    def residual(self, h: torch.Tensor, *, precise: bool = True) -> torch.Tensor:
        h = h.float()
        return (h @ self.weighted).norm(dim=-1) / h.norm(dim=-1).clamp_min(1e-30)


def spans(layout, grads, names):
    mats = [grads[n].to(layout.device) for n in layout.qkv_names(1)]
    _, s, vh = torch.linalg.svd(torch.cat([m.double() for m in mats], 0), full_matrices=False)
    s = s / s[0]
    out = {}
    for n in names:
        if n == "sentence":
            out[n] = sentence_spans(layout, grads, None, "classify")
        elif n == "x":
            span = layer_span(layout, grads, 1)
            print(f"layer-1 span: rank {span.rank}, gap {'yes' if span.exact else 'none'}")
            if span.exact:
                out[n] = span
        else:
            out[n] = partial_span(mats, 1, int(n[1:])) if n[0] == "d" else SoftSpan(s, vh.T, float(s[int(n[1:])]))
    return out


def descend(search, seq: list[int], steps: int) -> list[int]:
    """Up to `steps` of `SentenceMove`, stopping once the sentence spans certify the guess."""
    move = SentenceMove()
    for _ in range(steps):
        if search.spans.certifies(search.layout, [seq])[0]:
            break
        seq, _ = move(search, seq)
    return seq


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="rt")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--index", type=int, default=0)
    ap.add_argument("--spans", default="d10,d30,d60,s340")
    ap.add_argument("--k", default="6,10", help="random tokens per sentence")
    ap.add_argument("--peel", type=int, default=0, help="shortest sentences taken off first")
    ap.add_argument("--out", default="results/beyond_rank_settle.jsonl")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    b = leaked_batch(args.data, args.batch_size, args.index, args.peel)
    layout, grads, truth, cands = b.layout, b.grads, b.truth, b.cands
    lengths = b.lengths
    table = []
    with layer0_table(layout, max(lengths)):
        by_name = spans(layout, grads, args.spans.split(","))
        for k in (int(x) for x in args.k.split(",")):
            rng = random.Random(k)
            seeds = []
            for seq in truth:
                seed, inner = list(seq), range(1, len(seq) - 1)
                for p in rng.sample(inner, min(k, len(inner))):
                    seed[p] = rng.choice(cands.free(p))
                seeds.append(seed)
            for name, span in by_name.items():
                search = SimpleNamespace(config=SimpleNamespace(settle=10), layout=layout, span1=span, ends=True,
                                         free=cands.free)
                t0 = time.perf_counter()
                if name == "sentence":
                    search.spans, search.residuals = span, lambda seqs: torch.zeros(len(seqs))
                    settled = [descend(search, s, k + 1) for s in seeds]
                else:
                    settled = [settle(search, [s])[0] for s in seeds]
                table.append({"span": name, "k": k, "recovered": sum(s == t for s, t in zip(settled, truth)),
                              "sentences": len(truth), "wrong_tokens": sum(a != b for s, t in zip(settled, truth)
                                                                           for a, b in zip(s, t)),
                              "seconds": round(time.perf_counter() - t0, 1)})
                print(f"k {k:>2} {name:>5}: {table[-1]['recovered']}/{len(truth)} settled back, "
                      f"{table[-1]['wrong_tokens']} tokens wrong, {table[-1]['seconds']} s", flush=True)
    out = Path(args.out).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"data": args.data, "batch_size": args.batch_size, "index": args.index, "peel": args.peel,
                               "tokens": sum(lengths), "rows": table}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
