"""Scratch: the likelihood search continued from a settled guess (initial_ids), far on or off, budget B."""
import sys, json, time, os
sys.path.insert(0, "/tmp/s20")
from common import *
from textleak.core.budget import time_budget
from textleak.attacks.base import prepare
from textleak.validate import attack_instance
far, budget, text, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
t, cap, tok, truth, y = setup("rt", 2)
seq = tok(text)["input_ids"]
opts = {"initial_ids": [seq], "indel_far": far, "prior": "bigram"}
prepare(attack_instance("likelihood", opts, 2), t, noisy=True)
c0, t0 = time.process_time(), time.perf_counter()
with time_budget(budget) as b:
    res = textleak.recover(gradients=cap.gradients, model=t, attack="likelihood", reference=cap.reference,
                           unknown=["labels"], options=opts, progress=False)
rec = {"indel_far": far, "budget": budget, "start": text, "recovered": res.texts, "rouge1": res.metrics["mean"]["rouge1"],
       "cpu_seconds": time.process_time() - c0, "seconds": time.perf_counter() - t0, "load": os.getloadavg()[0],
       "J_final": res.details["steps"][-1][3], "steps": res.details["steps"]}
json.dump(rec, open(out, "w"))
print(far, rec["rouge1"], rec["cpu_seconds"], rec["J_final"], res.texts[0])
