"""Scratch (ground truth, oracle stretch): each maximal wrong run of the 8 settled RT guesses (its outer neighbours
are right by construction), filled from the training sentences (`prior_files()`): the token sequences of the
run's length seen between the run's left and right neighbour (1 anchor each side) or two (2 anchors), ranked by
count. Reports, per run, how many fillers were seen and the true filler's rank (None: never seen).
Usage: python span_fill.py < ../diag/guesses.tsv > span_fill.txt"""
import sys, os
from collections import Counter
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "../diag"))
import ranks as R  # noqa: E402
from textleak.text.prior import prior_files, training_texts  # noqa: E402

runs, tok = [], None
for label, data, i, text in (ln.rstrip("\n").split("\t") for ln in sys.stdin if ln.strip()):
    t, cap, tok, truth, y, lay, banned, rs, head, prior = R.ctx(data, int(i))
    seq = tok(text)["input_ids"]
    if len(seq) != len(truth):
        continue
    p = 1
    while p < len(seq) - 1:
        if seq[p] != truth[p]:
            q = p
            while seq[q + 1] != truth[q + 1]:
                q += 1
            runs.append((label, i, p, q, seq, truth))
            p = q + 1
        p += 1
want = {}
for k, (label, i, a, b, seq, truth) in enumerate(runs):
    m = b - a + 1
    for n in (1, 2):
        left = tuple(seq[max(0, a - n):a]); right = tuple(seq[b + 1:b + 1 + n])
        want.setdefault((left, right, m), []).append((k, n))
fill = {key: Counter() for key in want}
for path in prior_files():
    for ids in tok(training_texts(path))["input_ids"]:
        for (left, right, m) in want:
            nl, nr = len(left), len(right)
            for s in range(nl, len(ids) - m - nr + 1):
                if tuple(ids[s - nl:s]) == left and tuple(ids[s + m:s + m + nr]) == right:
                    fill[(left, right, m)][tuple(ids[s:s + m])] += 1
tot = Counter()
for k, (label, i, a, b, seq, truth) in enumerate(runs):
    m = b - a + 1
    out = [f"{label} rt{i} pos {a}-{b} (len {m}) true={tok.decode(truth[a:b+1])!r}"]
    for n in (1, 2):
        c = fill[(tuple(seq[max(0, a - n):a]), tuple(seq[b + 1:b + 1 + n]), m)]
        tt = tuple(truth[a:b + 1])
        r = sum(v > c[tt] for v in c.values()) if tt in c else None
        out.append(f"{n} anchor(s): {len(c)} fillers seen, true rank {r}")
        tot[(n, "runs")] += 1; tot[(n, "pos")] += m
        if r is not None:
            tot[(n, "found_runs")] += 1; tot[(n, "found_pos")] += m
            if r < 8:
                tot[(n, "top8_runs")] += 1; tot[(n, "top8_pos")] += m
    print(" | ".join(out))
for n in (1, 2):
    print(f"# {n} anchor(s) each side: true filler seen in training for {tot[(n,'found_runs')]} of {tot[(n,'runs')]} runs "
          f"({tot[(n,'found_pos')]} of {tot[(n,'pos')]} positions), in the top 8 fillers for {tot[(n,'top8_runs')]} runs "
          f"({tot[(n,'top8_pos')]} positions)")
