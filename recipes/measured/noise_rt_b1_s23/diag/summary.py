"""Scratch: markdown rows from spans_*.jsonl and blocks_*.jsonl (argv: spans file, blocks file)."""
import json, sys
blocks = {}
for l in open(sys.argv[2]):
    u = json.loads(l); blocks[u["label"]] = u
print("| guess | tokens | wrong | J(truth) - J(guess) | J_w gap | wrong runs: dJ fixing the run alone (guess -> truth span) | runs whose truth beats the guess in the true context | greedy run fixes reach the truth (J / J_w) | wrong left after greedy oracle blocks of <= 1 / 2 / 4 tokens on J | same on J_w | true singles raising J / J_w |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for l in open(sys.argv[1]):
    u = json.loads(l)
    if "skipped" in u:
        print(f"| {u['label']} RT{u['i']} | | | skipped: {u['skipped']} (re-tokenised text) | | | | | | | |"); continue
    b = blocks.get(u["label"], {})
    runs = "; ".join(f"{s['at'][0]}-{s['at'][1]} \"{s['guess']}\" -> \"{s['truth']}\" {s['dJ_fix']:+.4f}" for s in u["spans"])
    keep = sum(s["dJ_keep"] > 0 for s in u["spans"])
    reach = lambda k: "yes" if u[k]["greedy_fixed"] == u["wrong"] else f"{u[k]['greedy_fixed']} of {u['wrong']}"
    bl = lambda k: " / ".join(str(b.get(k, {}).get(x, "-")) for x in ("1", "2", "4")) if b else "-"
    print(f"| {u['label']} | {u['L']} | {u['wrong']} | {u['J']['gap']:+.4f} | {u['Jw']['gap']:+.4f} | {runs} | {keep} of {len(u['spans'])} | {reach('J')} / {reach('Jw')} | {bl('J')} | {bl('Jw')} | {u['J']['singles_up']} / {u['Jw']['singles_up']} |")
