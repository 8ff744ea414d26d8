"""Scratch (ground truth only scores; never imported by attack code), session 23: for each settled
guess (stdin: label, data, index, text; or a units.jsonl as argv[1]), does J score the truth above
the guess? Per wrong run (maximal run of wrong positions, the guess and truth of equal length):
dJ_fix = J(guess with the run set to the truth) - J(guess) (a span move from the guess reaches it),
dJ_keep = J(truth) - J(truth with the run set back to the guess) (the truth's span is better in the
true context); a greedy path of whole-run fixes from the guess (each must raise J); the same on J_w
(the first climb's objective, weights at the guess); singles (the true token alone)."""
import os, sys, json, resource
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s20/diag"))
from common import *  # noqa

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF); return r.ru_utime + r.ru_stime

def wrong_runs(seq, truth):
    wrong = [p for p in range(1, len(seq) - 1) if seq[p] != truth[p]]
    out = []
    for p in wrong:
        if out and out[-1][-1] == p - 1:
            out[-1].append(p)
        else:
            out.append([p])
    return wrong, out

def put(seq, src, run):
    s = list(seq)
    for p in run:
        s[p] = src[p]
    return s

def greedy(g, seq, truth, runs):
    """Whole-run fixes from the guess, best first, each must raise the objective: runs fixed."""
    cur, best, left, taken = list(seq), J(g, [seq])[0], list(runs), []
    while left:
        trials = [put(cur, truth, r) for r in left]
        js = J(g, trials)
        k = max(range(len(js)), key=lambda k: js[k])
        if js[k] <= best:
            break
        cur, best = trials[k], js[k]
        taken.append(left.pop(k))
    return taken, left

def analyse(tok, t, cap, truth, y, label, seq):
    out = dict(label=label, L=len(truth))
    wrong, runs = wrong_runs(seq, truth)
    out["wrong"], out["runs"] = len(wrong), [[r[0], r[-1]] for r in runs]
    for name, w in (("J", False), ("Jw", True)):
        g = guess_for(t, cap, seq, y, weighted=w)
        jg, jt = J(g, [seq, truth])
        fix = [j - jg for j in J(g, [put(seq, truth, r) for r in runs])]
        keep = [jt - j for j in J(g, [put(truth, seq, r) for r in runs])]
        singles = [j - jg for j in J(g, [put(seq, truth, [p]) for p in wrong])]
        taken, left = greedy(g, seq, truth, runs)
        out[name] = dict(guess=jg, truth=jt, gap=jt - jg, fix=fix, keep=keep, singles_up=sum(s > 0 for s in singles),
                         greedy_fixed=sum(len(r) for r in taken), greedy_left=[[r[0], r[-1]] for r in left])
    out["spans"] = [dict(at=[r[0], r[-1]], guess=tok.decode(seq[r[0]:r[-1] + 1]), truth=tok.decode(truth[r[0]:r[-1] + 1]),
                         dJ_fix=round(out["J"]["fix"][k], 5), dJ_keep=round(out["J"]["keep"][k], 5),
                         dJw_fix=round(out["Jw"]["fix"][k], 5)) for k, r in enumerate(runs)]
    return out

def inputs():
    if len(sys.argv) > 1 and sys.argv[1].endswith(".jsonl"):
        for line in open(sys.argv[1]):
            u = json.loads(line)
            yield f"{os.path.basename(os.path.dirname(sys.argv[1]))}", u["data"], u["index"], u["recovered"][0]
    else:
        for line in sys.stdin:
            label, data, i, text = line.rstrip("\n").split("\t")
            yield label, data, int(i), text

def main():
    for label, data, i, text in inputs():
        c0 = cpu()
        t, cap, tok, truth, y = setup(data, i)
        seq = tok(text)["input_ids"]
        if len(seq) != len(truth):
            print(json.dumps(dict(label=label, i=i, skipped=f"len {len(seq)} != {len(truth)}")), flush=True)
            continue
        out = analyse(tok, t, cap, truth, y, f"{label} {data}{i}", seq)
        out["cpu"] = round(cpu() - c0, 1)
        print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
