"""Scratch (s22): from endstate.py's final guess (same capture), the change of the batch likelihood (nats)
of exchanging the tokens at positions a..b between two sentences (a block swap: a token keeps its position,
its neighbours go with it), for every pair and block of width 1..4; are any kept (likelihood up), and do
they move tokens toward their owners?
usage: python blockswap.py DATA INDEX"""
import json, math, os, resource, sys
import textleak
from textleak.data import read_sentences
from textleak.text.models import load_text_model
from textleak.text.layouts import layout_for
from textleak.attacks.likelihood_state import _Batch
from textleak.attacks.likelihood_batch import BatchLikelihoodSearch

data, index = sys.argv[1], int(sys.argv[2])
here = os.path.dirname(os.path.abspath(__file__))
end = json.load(open(f"{here}/endstate_{data}{index}.json"))
B, VAR = 4, 1e-6
sigma = math.sqrt(VAR)
target = load_text_model(None, task="classify")
rows = [(t, y or 0) for t, y in read_sentences(data)][index * B:(index + 1) * B]
texts, labels = [t for t, _ in rows], [y for _, y in rows]
cap = textleak.capture_gradients(target, texts, labels=labels, seed=index, defence=f"noise:{VAR:g}")
layout, tok = layout_for(target.model), target.tokenizer
truth = [tok(t)["input_ids"] for t in texts]
batch = _Batch(layout, cap.gradients.gradients, end["final_ids"], end["labels"])
gain = BatchLikelihoodSearch._gain
scale = 2 * (B * sigma) ** 2
res = []
for i in range(B):
    for j in range(i + 1, B):
        hi = min(len(batch.seqs[i]), len(batch.seqs[j])) - 1
        for w in range(1, 5):
            for a in range(1, hi - w + 1):
                xi, xj = list(batch.seqs[i]), list(batch.seqs[j])
                t, u = list(xi), list(xj)
                t[a:a + w], u[a:a + w] = xj[a:a + w], xi[a:a + w]
                if t == xi:
                    continue
                g1 = gain(batch, i, [t])[0]
                batch.set(i, t, batch.labels[i])
                g2 = gain(batch, j, [u])[0]
                batch.set(i, xi, batch.labels[i])
                right = sum((truth[i][p] == t[p]) - (truth[i][p] == xi[p]) for p in range(a, a + w) if p < len(truth[i])) + \
                    sum((truth[j][p] == u[p]) - (truth[j][p] == xj[p]) for p in range(a, a + w) if p < len(truth[j]))
                res.append(((g1 + g2) / scale, i, j, a, w, right, tok.decode(xi[a:a + w]), tok.decode(xj[a:a + w])))
res.sort(reverse=True)
print("final:", [tok.decode(s[1:-1]) for s in batch.seqs])
print(f"block swaps scored {len(res)}; raising the likelihood: {sum(r[0] > 0 for r in res)}")
for r in res[:12]:
    print(f"  {r[0]:9.1f} nats  {r[1]}<->{r[2]} at {r[3]}..{r[3] + r[4] - 1}  true tokens gained {r[5]:+d}  '{r[6]}' <-> '{r[7]}'")
ru = resource.getrusage(resource.RUSAGE_SELF)
json.dump({"swaps": res[:40], "n": len(res), "kept": sum(r[0] > 0 for r in res), "cpu_s": ru.ru_utime + ru.ru_stime,
           "load": os.getloadavg()[0]}, open(f"{here}/blockswap_{data}{index}.json", "w"), indent=1)
print("cpu", ru.ru_utime + ru.ru_stime, "load", os.getloadavg()[0])
