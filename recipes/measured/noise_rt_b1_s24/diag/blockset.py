"""Scratch (ground truth only scores and checks; never imported by attack code), session 24: does a
2-token block move drawn from the context candidates contain the changes J_w needs? From each settled
guess (stdin: label, data, index, text), a greedy oracle path on J_w (weights at the guess) whose moves
set one position, or two adjacent positions, to the truth, restricted to the moves a candidate set
holds; the best J_w-raising allowed move first, lists recomputed at each step. Sets:
  single<K>: the true token in the top K of the context score with the position masked alone;
  block<K>: single<4> (what sweeps try), or a pair whose true tokens are both in the top K of the
            context score with both positions masked together (rank a + rank b < K + K//2 when tri);
Reports the wrong positions left per set, and the true pair's joint-mask ranks at the wrong pairs."""
import os, sys, json, resource
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s21/diag"))
from ranks import *  # noqa  (ctx, common: setup, guess_for, J)

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

def lists(g, seq, head, rs, banned, word, groups, k):
    logp = head.log_probs(seq, groups)
    out = {}
    for grp, lp in zip(groups, logp):
        for j, p in enumerate(grp):
            out[(tuple(grp), p)] = context_candidates(lp[j], g.T[word] @ g.e[p], rs[:, p], banned, k)
    return out

def allowed(g, cur, truth, head, rs, banned, word, mode, K, S=4):
    L = len(cur)
    wrong = [p for p in range(1, L - 1) if cur[p] != truth[p]]
    single = lists(g, cur, head, rs, banned, word, [[p] for p in wrong], max(K, S) if mode == "single" else S)
    moves = [[p] for p in wrong if truth[p] in single[((p,), p)]]
    if mode == "cond":  # a from the joint mask's top K, b from b masked alone with a in place (both ways)
        pairs = [[p, p + 1] for p in range(1, L - 2) if (cur[p] != truth[p] or cur[p + 1] != truth[p + 1])]
        joint = lists(g, cur, head, rs, banned, word, pairs, K)
        for a, b in pairs:
            for first, second in ((a, b), (b, a)):
                if truth[first] not in joint[((a, b), first)]:
                    continue
                put = list(cur); put[first] = truth[first]
                lp = head.log_probs(put, [[second]])[0][0]
                l2 = context_candidates(lp, g.T[word] @ g.e[second], rs[:, second], banned, K)
                if truth[second] in l2:
                    moves.append([a, b]); break
    if mode == "block":
        pairs = [[p, p + 1] for p in range(1, L - 2) if (cur[p] != truth[p] or cur[p + 1] != truth[p + 1])]
        joint = lists(g, cur, head, rs, banned, word, pairs, K)
        for a, b in pairs:
            la, lb = joint[((a, b), a)], joint[((a, b), b)]
            if truth[a] in la and truth[b] in lb and la.index(truth[a]) + lb.index(truth[b]) < K + K // 2:
                moves.append([a, b])
    return wrong, moves

def path(g, seq, truth, head, rs, banned, word, mode, K, S=4):
    cur, best = list(seq), J(g, [seq])[0]
    while True:
        wrong, moves = allowed(g, cur, truth, head, rs, banned, word, mode, K, S)
        trials = [[truth[q] if q in m else c for q, c in enumerate(cur)] for m in moves]
        trials = [t for t in trials if t != cur]
        if not trials:
            return len(wrong)
        js = J(g, trials)
        k = max(range(len(js)), key=lambda k: js[k])
        if js[k] <= best:
            return len(wrong)
        cur, best = trials[k], js[k]

def main():
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t"); i = int(i)
        c0 = cpu()
        t, cap, tok, truth, y, lay, banned, rs, head, prior = ctx(data, i)
        seq = tok(text)["input_ids"]
        if len(seq) != len(truth):
            continue
        word = lay.word_embedding_name
        g = guess_for(t, cap, seq, y, weighted=True)
        L = len(seq)
        wrong = [p for p in range(1, L - 1) if seq[p] != truth[p]]
        pairs = [[p, p + 1] for p in range(1, L - 2) if seq[p] != truth[p] and seq[p + 1] != truth[p + 1]]
        joint = lists(g, seq, head, rs, banned, word, pairs, 30000)
        ranks = [(a, joint[((a, b), a)].index(truth[a]), joint[((a, b), b)].index(truth[b])) for a, b in pairs]
        out = dict(label=f"{label} {data}{i}", wrong=len(wrong), joint_ranks=ranks)
        for mode, K, S in (("single", 4, 4), ("single", 64, 4), ("block", 16, 4), ("block", 16, 64),
                           ("cond", 8, 4), ("cond", 8, 64), ("cond", 16, 64)):
            out[f"{mode}{K}/s{S}"] = path(g, seq, truth, head, rs, banned, word, mode, K, S)
        out["cpu"] = round(cpu() - c0, 1)
        print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
