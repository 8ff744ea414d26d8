"""Reproduce DLG's language result (Zhu et al., NeurIPS 2019, Table 2) on a masked-LM.

Three sentences of the NeurIPS 2019 call for papers are masked as in BERT pre-training, their
gradient captured, and the attack run; the decoded text is printed at iterations 0, 10, 20 and 30
and at the end, as in the paper's table, with final scores and time. Results go to a JSON file,
written after each sentence so an interrupted run resumes where it stopped (--resume).

    python recipes/dlg_language.py                      # packaged MiniLM: DLG, then auto
    python recipes/dlg_language.py --model bert-base-uncased --attacks dlg
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import textleak
from textleak.capture import DEFAULT_DECLARED
from textleak.cli import _quiet_libraries, run_script
from textleak.text.models import load_text_model

SENTENCES = [
    "Registration, volunteer applications, and student travel application open the first week of September. Child care will be available.",
    "We welcome proposals for tutorials on either core machine learning topics or topics of emerging importance for machine learning.",
    "We invite submissions for the Thirty-Third Annual Conference on Neural Information Processing Systems.",
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="default: the packaged MiniLM")
    p.add_argument("--attacks", default="dlg,auto", help="comma-separated attack names")
    p.add_argument("--steps", type=int, help="optimisation steps (attack default when omitted)")
    p.add_argument("--restarts", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-prob", type=float, default=0.15)
    p.add_argument("--out", default="results/dlg_language.json")
    p.add_argument("--resume", action="store_true", help="keep sentences already in --out")
    p.add_argument("--known-labels", action="store_true",
                   help="declare the masked tokens known to the attacker (default: it must find them)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    _quiet_libraries()
    torch.manual_seed(args.seed)

    out = Path(args.out)
    done = json.loads(out.read_text())["sentences"] if args.resume and out.exists() else []
    target = load_text_model(args.model, task="mlm")
    options = {k: v for k, v in {"steps": args.steps, "restarts": args.restarts}.items() if v is not None}
    units = [(a, i, s) for a in args.attacks.split(",") for i, s in enumerate(SENTENCES)]
    for attack, i, sentence in units:
        if any(d["attack"] == attack and d["index"] == i for d in done):
            continue
        cap = textleak.capture_gradients(target, [sentence], mask_prob=args.mask_prob, seed=args.seed + i,
                                         declare=DEFAULT_DECLARED + (("labels",) if args.known_labels else ()))
        t0 = time.perf_counter()
        result = textleak.recover(gradients=cap.gradients, model=target, attack=attack,
                                  reference=cap.reference, options=options,
                                  seed=args.seed, progress=not args.quiet)
        seconds = time.perf_counter() - t0
        m = result.metrics["mean"]
        print(f"\n=== {attack}: sentence {i + 1} ({len(cap.reference.token_ids[0])} tokens, "
              f"method {result.method}) ===")
        print(f"{'iteration':>9}  text")
        for snap in result.snapshots:
            print(f"{snap['step']:>9}  {snap['texts'][0]}")
        print(f"{'end':>9}  {result.texts[0]}")
        print(f"{'original':>9}  {sentence}")
        print(f"ROUGE-1 {m['rouge1']:.3f}  ROUGE-2 {m['rouge2']:.3f}  ROUGE-L {m['rougeL']:.3f}  "
              f"token acc {m['token_accuracy']:.3f}  exact {m['exact_match']:.0f}  time {seconds:.1f}s", flush=True)
        done.append({"attack": attack, "index": i, "sentence": sentence, "seconds": seconds,
                     "result": result.to_dict()})
        _write(out, args, done)

    print("\nattack    sentence  ROUGE-1  ROUGE-2  exact  seconds")
    for d in done:
        m = d["result"]["metrics"]["mean"]
        print(f"{d['attack']:<8}  {d['index'] + 1:>8}  {m['rouge1']:7.3f}  {m['rouge2']:7.3f}  "
              f"{m['exact_match']:5.0f}  {d['seconds']:7.1f}")
    print(f"wrote {out}")
    return 0


def _write(out: Path, args: argparse.Namespace, done: list) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"recipe": "dlg_language", "args": vars(args), "versions": textleak.versions.versions(),
               "sentences": done}
    textleak.io.atomic_write_text(out, json.dumps(summary, indent=1))


if __name__ == "__main__":
    run_script(main, "dlg_language")
