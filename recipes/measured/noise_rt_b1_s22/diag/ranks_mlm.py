"""Scratch: session 21's ranks.py (the true token's rank at each wrong position of the settled
guesses) with the masked head replaced by a fine-tuned MLM from mlm.py (argv[2]: its .pt; 'old' keeps
the s16 head). Usage: python ranks_mlm.py OUT.jsonl STATE.pt < ../../noise_rt_b1_s21/diag/guesses.tsv"""
import os, sys
here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "../../noise_rt_b1_s21/diag")); sys.path.insert(0, here)
import torch
import ranks, mlm
from textleak.text.masked_prior import ContextHead, load_context_head
from textleak.text.layouts import layout_for

_M = {}
def patched(t):
    if sys.argv[2] == "old":
        return load_context_head(t)
    if "m" not in _M:
        st = torch.load(sys.argv[2], weights_only=True)
        head = ContextHead(layout_for(t.model), t.tokenizer.mask_token_id, st["head"])
        m = mlm.MLM(t, head, st["K"]); m.top.load_state_dict(st["top"]); m.eval()
        _M["m"] = m
    return _M["m"]
ranks.load_context_head = patched

if __name__ == "__main__":
    out = open(sys.argv[1], "a")
    import json
    for line in sys.stdin:
        label, data, i, text = line.rstrip("\n").split("\t")
        r = ranks.analyse(data, int(i), text, label)
        if r: out.write(json.dumps(r) + "\n"); out.flush()
