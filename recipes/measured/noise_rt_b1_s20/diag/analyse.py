import json, sys
for l in open(sys.argv[1] if len(sys.argv)>1 else '/tmp/s20/probe.jsonl'):
    r = json.loads(l)
    if 'skip' in r: print(r['skip']); continue
    L, sup, rz, seq, truth = r['L'], r['support'], r['rowz'], r['seq'], r['truth']
    inner = range(1, L-1)
    order = sorted(inner, key=lambda p: sup[p])
    rank_sup = {p: k for k, p in enumerate(order)}
    # row shift evidence: the tokens after a fit one place left better than where they stand
    def shiftL(a, w=3):  # deleting a moves a+1.. left by one
        return sum(rz[q][0] - rz[q][1] for q in range(a+1, min(L-1, a+1+w)))
    def shiftR(a, w=3):  # deleting a, inserting before: tokens before a move right
        return sum(rz[q][2] - rz[q][1] for q in range(max(1, a-w), a))
    ev = {p: max(shiftL(p), shiftR(p)) for p in inner}
    rank_ev = {p: k for k, p in enumerate(sorted(inner, key=lambda p: -ev[p]))}
    currently = {p for p in inner if r['repeat'][p] or seq[p] in r['fillers'] or L - 2 <= 16}
    print(f"== {r['i']} {r['text'][:60]} gap {r['Jt']-r['Jg']:+.4f} ham0 {r['ham0']} up {len(r['up'])}")
    seen = set()
    for a, b, c, kind, dj, ham in r['up'][:12]:
        print(f"   del {a:2d} {r['toks'][a]:>12s} ins {b:2d} {kind:5s} {r['up_tokens'][r['up'].index([a,b,c,kind,dj,ham])]:>10s} dJ {dj:+.5f} ham {ham} "
              f"cur_deletable {a in currently} sup_rank {rank_sup[a]} ev_rank {rank_ev[a]} (ev {ev[a]:+.1f})")
