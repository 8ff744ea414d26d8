"""Auditing a Flower federation: the server as an honest-but-curious attacker.

`LeakageAudit(strategy, model=...)` wraps any Flower strategy (Message API: flwr >= 1.21, < 2,
`flwr.serverapp.strategy.Strategy`). It behaves exactly like the strategy it wraps (sampling,
aggregation and evaluation are the wrapped strategy's), and in addition, for every client
reply of a training round:

1. it reads the weights the client sent back (wK) and the global weights the round sent that
   client (w0), and records the client's *update* as a textleak gradient file, the way
   `textleak.defences.fedavg` records one: (w0 - wK) / (lr * K), which is the gradient exactly
   for one SGD step. The settings come from the client's reply (`SETTINGS_KEY`, written by
   `textleak.integrations.flower_client`): local steps, learning rate, batch size, optimiser,
   DP clipping and noise, and the facts the client declares the attacker knows (batch size,
   sequence lengths...). A reply without them is attacked as a plain gradient (w0 - wK, scale
   unknown, nothing declared) and its record says so;
2. it attacks the update (`textleak.recover`, attack `auto` by default, under an optional time
   budget per update) and appends one JSON line per (round, client) to `out_dir/records.jsonl`:
   the method, the recovered text, the settings, seconds, budget, notes, and, when the client
   sent its ground truth for the audit (`REFERENCE_KEY`, opt-in, removed from the reply before
   anything else reads it), ROUGE-1/2 and exact match.

The wrapper needs nothing from the transport: it runs unchanged in the simulation engine
(`flwr.simulation.run_simulation`, one machine) and in a deployment (`flower-superlink`,
`flower-supernode`, `flwr run`), because it only reads the messages the strategy already handles.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

from ..errors import InputError, TextleakError

SUPPORTED = ">=1.21,<2"
SETTINGS_KEY = "textleak.settings"  # ConfigRecord {"json": settings} in a client's reply
REFERENCE_KEY = "textleak.reference"  # ConfigRecord {"json": Reference}: ground truth, audits only


def check_flower(version: str | None = None) -> str:
    """The installed flwr version, or a one-line InputError naming the supported range."""
    if version is None:
        try:
            import flwr
        except ImportError:
            raise InputError(f"the Flower integration needs flwr{SUPPORTED}: pip install 'textleak[flower]'") from None
        version = getattr(flwr, "__version__", "0")
    try:
        from packaging.version import Version

        ok = Version("1.21") <= Version(version) < Version("2")
    except Exception:  # an unparsable version string
        ok = False
    if not ok:
        raise InputError(f"textleak's Flower integration needs flwr{SUPPORTED} (the Message API: "
                         f"flwr.serverapp.strategy.Strategy); found flwr {version}: pip install 'textleak[flower]'")
    return version


check_flower()
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord  # noqa: E402
from flwr.serverapp.strategy import Strategy  # noqa: E402


def _json_record(record: Any) -> dict[str, Any] | None:
    if record is None:
        return None
    try:
        return json.loads(record["json"])
    except (KeyError, TypeError, json.JSONDecodeError):
        return None


def settings_record(settings: Mapping[str, Any]) -> ConfigRecord:
    """What a client attaches to its reply under SETTINGS_KEY (see flower_client)."""
    return ConfigRecord({"json": json.dumps(dict(settings))})


def _arrays(content: Any, key: str) -> ArrayRecord | None:
    records = content.array_records
    if key in records:
        return records[key]
    return next(iter(records.values())) if len(records) == 1 else None


def client_update(w0: Mapping[str, torch.Tensor], wk: Mapping[str, torch.Tensor], names: Iterable[str],
                  settings: Mapping[str, Any] | None) -> tuple[dict[str, torch.Tensor], str, list[str]]:
    """(tensor shared per parameter, what it is, notes): the update (w0 - wK) / (lr * K) when the
    settings give lr and K, else the plain weight difference w0 - wK."""
    notes: list[str] = []
    lr = (settings or {}).get("lr")
    steps = (settings or {}).get("local_steps")
    missing = [n for n in names if n not in wk or n not in w0]
    if missing:
        raise InputError(f"the client's weights lack {missing[0]!r}; is it the same model as the server's?")
    diff = {n: (w0[n].double() - wk[n].double()) for n in names}
    if isinstance(lr, (int, float)) and lr > 0 and isinstance(steps, int) and steps >= 1:
        scale = 1.0 / (lr * steps)
        kind = "update"
        if settings.get("optimizer", "sgd") != "sgd":
            notes.append(f"optimiser {settings.get('optimizer')}: the update is not a multiple of the gradient")
    else:
        scale, kind = 1.0, "weight difference"
        notes.append("the reply carried no learning rate and local steps: attacked w0 - wK as a plain gradient "
                     "(its scale is unknown)")
    return {n: (d * scale).float() for n, d in diff.items()}, kind, notes


class LeakageAudit(Strategy):
    """Wraps `strategy`; attacks every client's update as an honest-but-curious server.

    model / task / num_labels / head_seed: the architecture the federation trains (the global
        weights of each round are loaded into it; a name or folder as for `load_text_model`).
    attack, options, unknown, budget: as for `textleak.recover` (budget: seconds per update).
    out_dir: where records.jsonl (and, with save_gradients, round-R/node-N/grads.pt plus the
        round's model/) go; None keeps records in memory only (`self.records`).
    say: progress lines (None: silent).
    """

    def __init__(self, strategy: Strategy, *, model: str | None = None, task: str = "classify",
                 num_labels: int = 2, head_seed: int = 0, attack: str | None = "auto",
                 options: Mapping[str, Any] | None = None, unknown: Iterable[str] = (),
                 budget: float | None = None, out_dir: str | Path | None = None,
                 save_gradients: bool = False, say: Callable[[str], None] | None = print):
        if not isinstance(strategy, Strategy):
            raise InputError("LeakageAudit wraps a Message-API strategy (flwr.serverapp.strategy.Strategy), "
                             f"got {type(strategy).__name__}")
        self.strategy = strategy
        self.model, self.task, self.num_labels, self.head_seed = model, task, num_labels, head_seed
        self.attack, self.options, self.unknown, self.budget = attack, dict(options or {}), tuple(unknown), budget
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.save_gradients = save_gradients
        self.say = say
        self.records: list[dict[str, Any]] = []
        self._sent: dict[tuple[int, int], ArrayRecord] = {}
        self._target = None
        self._loaded: tuple | None = None  # (the ArrayRecord sent, the target holding it, its state)
        self._writer = None

    # -- the wrapped strategy ---------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:  # the wrapped strategy's settings (fraction_train, ...)
        strategy = self.__dict__.get("strategy")
        if strategy is None:
            raise AttributeError(name)
        return getattr(strategy, name)

    def summary(self) -> None:
        self.strategy.summary()

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> Iterable[Message]:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        key = getattr(self.strategy, "arrayrecord_key", "arrays")
        self._sent = {k: v for k, v in self._sent.items() if k[0] == server_round}  # keep one round
        for m in messages:
            sent = _arrays(m.content, key)
            if sent is not None:
                self._sent[(server_round, m.metadata.dst_node_id)] = sent
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for reply in replies:
            if reply.has_error() or not reply.has_content():
                continue
            reference = _json_record(reply.content.config_records.get(REFERENCE_KEY))
            settings = _json_record(reply.content.config_records.get(SETTINGS_KEY))
            for key in (REFERENCE_KEY, SETTINGS_KEY):  # the wrapped strategy sees the usual reply
                if key in reply.content.config_records:
                    del reply.content[key]
            self._observe(server_round, reply, settings, reference)
        return self.strategy.aggregate_train(server_round, replies)

    # -- the curious part -------------------------------------------------------------------
    def target(self):
        if self._target is None:
            from ..text.models import load_text_model

            self._target = load_text_model(self.model, task=self.task, num_labels=self.num_labels,
                                           head_seed=self.head_seed)
        return self._target

    def _observe(self, server_round: int, reply: Message, settings: dict | None, reference: dict | None) -> None:
        node = int(reply.metadata.src_node_id)
        record: dict[str, Any] = {"round": server_round, "node_id": node,
                                  "partition": (settings or {}).get("partition"), "settings": settings,
                                  "notes": []}
        t0 = time.perf_counter()
        try:
            self._attack(server_round, node, reply, settings, reference, record)
        except TextleakError as exc:  # one client's bad update never stops the federation
            record["error"] = str(exc)
        record["seconds"] = time.perf_counter() - t0
        self._write(record)
        if self.say is not None:
            m = record.get("metrics") or {}
            what = record.get("error") or (f"{record.get('method')}  " + (
                f"ROUGE-1 {m['rouge1']:.3f}  exact {m.get('exact_match', 0):.2f}" if m else "no ground truth"))
            self.say(f"round {server_round} node {node}: {what}  ({record['seconds']:.1f} s)")

    def _attack(self, server_round: int, node: int, reply: Message, settings: dict | None,
                reference: dict | None, record: dict[str, Any]) -> None:
        from ..recover import recover
        from ..threat import Reference

        sent = self._sent.get((server_round, node))
        key = getattr(self.strategy, "arrayrecord_key", "arrays")
        back = _arrays(reply.content, key)
        if sent is None or back is None:
            raise InputError("no weights to compare: the round's message to this client or its reply holds no ArrayRecord")
        target, w0 = self._load(sent)
        names = [n for n, p in target.model.named_parameters() if p.requires_grad]
        update, kind, notes = client_update(w0, back.to_torch_state_dict(), names, settings)
        record["notes"] += notes
        record["shared"] = kind
        grads = self._gradient_file(target, server_round, node, update, kind, settings)
        if self.attack is None:
            return
        ref = Reference(**{k: v for k, v in reference.items() if k not in ("format", "version")}) if reference else None
        if ref is None:
            record["notes"].append("no ground truth from the client: recovered text only, no scores")
        result = recover(gradients=grads, model=target, attack=self.attack, reference=ref,
                         unknown=self.unknown, options=self.options, progress=False, budget=self.budget)
        record.update(method=result.method, recovered=result.texts, references=ref.texts if ref else None,
                      certified=result.details.get("certified"), budget=result.details.get("budget"),
                      labels=result.prediction.get("labels"), tried=result.details.get("tried"))
        if result.metrics:
            record.update(metrics=result.metrics["mean"], per_example=result.metrics["per_example"])

    def _load(self, sent: ArrayRecord):
        """The attacker's model holding the weights the round sent (w0), and w0 itself."""
        from ..text.models import target_from_model

        if self._loaded is None or self._loaded[0] is not sent:
            t = self.target()
            w0 = sent.to_torch_state_dict()
            t.model.load_state_dict(w0)
            self._loaded = (sent, target_from_model(t.model, t.tokenizer, task=self.task, name=t.spec.name,
                                                    head_seed=self.head_seed), w0)
        return self._loaded[1], self._loaded[2]

    def _gradient_file(self, target, server_round: int, node: int, update: dict[str, torch.Tensor], kind: str,
                       settings: dict | None):
        from ..capturing import DECLARABLE, CaptureBuilder
        from ..gradients import GradientFile, check_finite

        check_finite(update, source=f"the update of node {node} in round {server_round}")
        folder = self.out_dir / f"round-{server_round}" / f"node-{node}" if self.out_dir is not None else None
        spec = target.spec.to_dict()
        if self.save_gradients and folder is not None:
            model_dir = folder.parent / "model"
            if not model_dir.exists():
                target.model.save_pretrained(model_dir)
                target.tokenizer.save_pretrained(model_dir)
            spec["name"] = str(model_dir.resolve())
        facts = (settings or {}).get("knowledge") or {}
        meta = CaptureBuilder(modality="text", source="flower", spec=spec, facts=facts,
                              declare=[k for k in facts if k in DECLARABLE and facts[k] is not None],
                              victim={"round": server_round, "node_id": node, "shared": kind,
                                      "settings": settings}).metadata()
        # what the server knows of the client's training: its mode and, for an update, the local steps
        # the client computed the update: this process's thread settings say nothing of its bits
        meta["capture"].pop("determinism", None)
        # (the client reports e.g. "eval (dropout off)"; the metadata keeps the protocol's word)
        said = str((settings or {}).get("mode", "unknown")).split(" ")[0]
        meta["capture"]["mode"] = said if said in ("eval", "train") else "unknown"
        if kind == "update":
            meta["capture"]["defence"] = {
                "spec": f"fedavg:{settings['local_steps']},{settings['lr']:g}", "name": "fedavg", "stage": "capture",
                "shares": "update", "params": {"local_steps": settings["local_steps"], "local_lr": settings["lr"]},
                "optimizer": settings.get("optimizer", "sgd")}
        grads = GradientFile(update, meta)
        if self.save_gradients and folder is not None:
            grads.save(folder / "grads.pt")
        return grads

    def _write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        if self.out_dir is None:
            return
        if self._writer is None:
            from ..sweep import JsonlAppender

            self._writer = JsonlAppender(self.out_dir / "records.jsonl")
        self._writer.append(record)
