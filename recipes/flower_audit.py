"""Audit a real Flower federation: what an honest-but-curious server reads from every client's update.

    python recipes/flower_audit.py --clients 2 --rounds 1 --batch-size 2 --local-steps 1 --data cola
    python recipes/flower_audit.py --clients 4 --rounds 3 --batch-size 2 --local-steps 4 --data sst2 --budget 120

Runs Flower's simulation engine (`flwr.simulation.run_simulation`, Ray underneath) on this
machine: N clients (virtual SuperNodes), FedAvg over R rounds, the packaged MiniLM classifier by
default. Client c in round r fine-tunes K local steps on its own B sentences (rows
((r-1)*N + c)*B ... of --data: every client and round sees new sentences), and sends its
weights, its settings and (for this audit only) its ground truth. The server's strategy is
FedAvg wrapped in `textleak.integrations.flower.LeakageAudit`, which attacks every update with
`auto` (optionally under --budget seconds per update).

Writes, under --out: records.jsonl (one JSON line per round and client: ROUGE-1/2, exact
match, method, seconds, the update's settings, recovered text), flower_audit.json (the
summary and the records), report.html (the whole federation: which clients leak what, per
round), and prints a table. A federation cannot resume in the middle: an --out that already
holds records is refused (`--report-only` rewrites the report from them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from textleak.cli import _quiet_libraries, run_script
from textleak.errors import InputError
from textleak.io import atomic_write_text


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=2, help="sentences per client per round (and per step)")
    p.add_argument("--local-steps", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1,
                   help="local SGD learning rate (default 0.1: clients send float32 weights, and at 1e-2 their "
                        "rounding blurs the update by about 1%% in the first layer, which today's exact attack "
                        "does not survive)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--max-grad-norm", type=float, help="DP-SGD per-example clipping (default: none)")
    p.add_argument("--noise-multiplier", type=float, default=0.0, help="DP-SGD noise (needs --max-grad-norm)")
    p.add_argument("--dropout", action="store_true", help="fine-tune in train mode (dropout on)")
    p.add_argument("--data", default="cola", help="cola, sst2, rt or a file")
    p.add_argument("--offset", type=int, default=0, help="first row used")
    p.add_argument("--model", help="default: the packaged MiniLM")
    p.add_argument("--attack", default="auto")
    p.add_argument("--budget", type=float, help="seconds per attacked update")
    p.add_argument("--threads", type=int, default=1, help="torch threads of each client and of the server")
    p.add_argument("--out", default="results/flower_audit")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if min(args.clients, args.rounds, args.batch_size, args.local_steps) < 1:
        raise InputError("--clients, --rounds, --batch-size and --local-steps must be at least 1")
    return args


def partitions(rows: list, clients: int, batch: int, offset: int):
    """data(partition, round) -> that client's rows for that round."""
    def data(partition: int, server_round: int):
        start = offset + ((server_round - 1) * clients + partition) * batch
        return rows[start:start + batch]
    return data


def simulate(args: argparse.Namespace, rows: list, out: Path) -> None:
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp import ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from textleak.integrations.flower import LeakageAudit
    from textleak.integrations.flower_client import LocalTraining, client_app
    from textleak.text.models import load_text_model

    torch.set_num_threads(args.threads)
    data = partitions(rows, args.clients, args.batch_size, args.offset)
    training = LocalTraining(local_steps=args.local_steps, lr=args.lr, batch_size=args.batch_size,
                             optimizer=args.optimizer, max_grad_norm=args.max_grad_norm,
                             noise_multiplier=args.noise_multiplier, dropout=args.dropout).validate()
    clients = client_app(data=data, model=args.model, training=training, send_reference=True, threads=args.threads)
    server = ServerApp()

    @server.main()
    def main(grid, context):
        initial = load_text_model(args.model, task="classify").model.state_dict()
        strategy = LeakageAudit(FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=args.clients,
                                       min_available_nodes=args.clients),
                                model=args.model, attack=args.attack, budget=args.budget, out_dir=out,
                                say=lambda m: print(m, flush=True))
        strategy.start(grid=grid, initial_arrays=ArrayRecord(initial), num_rounds=args.rounds,
                       train_config=ConfigRecord({"lr": args.lr, "local-steps": args.local_steps,
                                                  "batch-size": args.batch_size, "optimizer": args.optimizer}))

    cpus = min(args.clients, os.cpu_count() or 1)
    run_simulation(server_app=server, client_app=clients, num_supernodes=args.clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cpus, "include_dashboard": False,
                                                 "log_to_driver": False}})


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    _quiet_libraries()
    from textleak.data import load_sentences
    from textleak.report.federation import federation_summary, federation_table, render_federation_html
    from textleak.schema import FEDERATION_RECORD
    from textleak.sweep import read_jsonl

    out = Path(args.out)
    log = out / "records.jsonl"
    settings = {k: getattr(args, k) for k in ("clients", "rounds", "batch_size", "local_steps", "lr", "optimizer",
                                              "max_grad_norm", "noise_multiplier", "dropout", "data", "model",
                                              "attack", "budget")}
    seconds = None
    if not args.report_only:
        if log.exists():
            raise InputError(f"{log} already holds a federation's records; use another --out, or --report-only")
        examples = load_sentences(args.data)
        rows = [(e.text, e.label) for e in examples]
        need = args.offset + args.rounds * args.clients * args.batch_size
        if need > len(rows) or any(y is None for _, y in rows[:need]):
            raise InputError(f"{args.data} has {len(rows)} sentences (labelled ones needed); this federation needs {need}")
        t0 = time.perf_counter()
        simulate(args, rows, out)
        seconds = time.perf_counter() - t0
    if not log.exists():
        raise InputError(f"{log} does not exist: no federation ran")
    skipped: list[str] = []
    records = read_jsonl(log, skipped=skipped, schema=FEDERATION_RECORD)
    for line in skipped:
        print(f"note: left out {line}", file=sys.stderr)
    summary = federation_summary(records)
    if seconds is not None:
        summary["wall_seconds"] = seconds
        atomic_write_text(out / "wall_seconds.txt", f"{seconds:.1f}\n")
    elif (out / "wall_seconds.txt").exists():
        summary["wall_seconds"] = float((out / "wall_seconds.txt").read_text())
    atomic_write_text(out / "flower_audit.json", json.dumps({"settings": settings, "summary": summary,
                                                              "records": records}, indent=1))
    atomic_write_text(out / "report.html", render_federation_html(records, settings=settings))
    print(federation_table(records))
    r1 = summary["rouge1"]
    print(f"{summary['updates']} updates, mean ROUGE-1 {'-' if r1 is None else f'{r1:.3f}'}, "
          f"{summary['exact_sentences']}/{summary['sentences']} sentences exact, "
          f"{summary['updates_recovered']}/{summary['scored']} updates read in full"
          + (f"; wall time {summary['wall_seconds']:.0f} s" if "wall_seconds" in summary else ""))
    print(f"wrote {log}, {out / 'flower_audit.json'} and {out / 'report.html'}")
    return 0


if __name__ == "__main__":
    run_script(main, "flower_audit")
