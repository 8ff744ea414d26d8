"""The client side of a Flower federation: fine-tune an HF text model on a client's data and
reply with the weights plus what the audit needs to read the update.

`LocalTraining` holds the usual knobs: local steps K, learning rate, per-step batch size,
optimiser (`sgd`, or `adamw` as HF fine-tuning uses), DP-SGD clipping and noise (per-example
clipping to `max_grad_norm`, Gaussian noise of `noise_multiplier * max_grad_norm`, through
`textleak.defences` exactly as `capture` and `utility` use them), dropout on or off.
`fine_tune(target, rows, training)` runs K steps over the client's rows (step s takes rows
[s*B, s*B + B) cyclically, so a client holding B rows trains K epochs of one batch) and returns
the new weights, the settings, the declared knowledge and the ground truth.

`client_app(data=..., model=...)` builds a `flwr.clientapp.ClientApp` whose train function loads
the round's global weights, fine-tunes on `data(partition_id, server_round)` and replies with
the usual "arrays" and "metrics" records plus `textleak.settings` (the settings and the facts
declared to the attacker; `LeakageAudit` on the server reads them). With `send_reference=True`
(audits of your own test data only) it also sends the ground truth, which the server's
`LeakageAudit` removes from the reply before any code of the strategy sees it, and uses for
scoring only. The server's train config may set `lr`, `local-steps`, `batch-size`, `optimizer`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import torch

from ..capture import DEFAULT_DECLARED, declared_knowledge
from ..core.seeding import model_mode
from ..defences import shared_gradients
from ..errors import InputError
from ..threat import Reference
from .flower import REFERENCE_KEY, SETTINGS_KEY, check_flower, settings_record

check_flower()
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

Rows = Sequence[tuple[str, Any]]
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class LocalTraining:
    local_steps: int = 1
    lr: float = 1e-2
    batch_size: int = 8
    optimizer: str = "sgd"
    weight_decay: float = 0.0  # AdamW's (HF's default is 0.0 too)
    max_grad_norm: float | None = None  # DP-SGD per-example clipping (None: no clipping)
    noise_multiplier: float = 0.0  # DP-SGD noise, in units of max_grad_norm
    dropout: bool = False  # train mode (dropout on, as HF's Trainer) or eval mode (off)
    mask_prob: float = 0.15  # masked-LM
    declare: tuple[str, ...] = DEFAULT_DECLARED
    seed: int = 0

    def validate(self) -> "LocalTraining":
        if self.local_steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise InputError("local training needs local_steps >= 1, batch_size >= 1 and lr > 0")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
        if self.noise_multiplier and self.max_grad_norm is None:
            raise InputError("DP noise needs max_grad_norm (per-example clipping) too")
        return self

    def defence(self) -> str:
        return "none" if self.max_grad_norm is None else f"dpsgd:{self.max_grad_norm:g},{self.noise_multiplier:g}"

    def configured(self, config: Any) -> "LocalTraining":
        """These settings with the server's train config applied (lr, local-steps, batch-size, optimizer)."""
        names = {"lr": ("lr", float), "local-steps": ("local_steps", int), "batch-size": ("batch_size", int),
                 "optimizer": ("optimizer", str)}
        changes = {field: kind(config[key]) for key, (field, kind) in names.items() if config and key in config}
        return replace(self, **changes).validate()


@dataclass
class ClientUpdate:
    state: dict[str, torch.Tensor]  # the weights after local training (state_dict)
    settings: dict[str, Any]  # what the reply's textleak.settings carries
    reference: Reference  # the sentences the update covers (ground truth, scoring only)
    loss: float


def fine_tune(target: Any, rows: Rows, training: LocalTraining = LocalTraining()) -> ClientUpdate:
    """K local steps on `rows` ((text, label) pairs; label None for masked-LM) of a TextTarget."""
    from ..text.batch import build_batch

    training.validate()
    rows = list(rows)
    if not rows:
        raise InputError("this client has no sentence to train on")
    task = target.spec.task
    model, tok = target.model, target.tokenizer
    gen = torch.Generator().manual_seed(training.seed)
    tb = build_batch(tok, [s for s, _ in rows], task=task,
                     labels=[int(y) for _, y in rows] if task == "classify" else None,
                     num_labels=target.spec.num_labels, mask_prob=training.mask_prob,
                     max_positions=target.max_positions, generator=gen)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.SGD(params, lr=training.lr, weight_decay=training.weight_decay)
                 if training.optimizer == "sgd" else
                 torch.optim.AdamW(params, lr=training.lr, weight_decay=training.weight_decay))
    used: list[int] = []
    losses = []
    with model_mode(model, train=training.dropout), torch.enable_grad():
        for step in range(training.local_steps):
            idx = [(step * training.batch_size + j) % len(rows) for j in range(min(training.batch_size, len(rows)))]
            used += [i for i in idx if i not in used]

            def loss_of(sub, idx=idx):
                pick = [idx[i] for i in sub]
                return model(**{k: v[pick] for k, v in tb.model_inputs().items()}, labels=tb.labels[pick]).loss

            with torch.no_grad():
                losses.append(float(loss_of(range(len(idx)))))
            grads = shared_gradients(training.defence(), model, loss_of, len(idx), gen)
            for n, p in model.named_parameters():
                p.grad = grads.get(n)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return ClientUpdate(state={k: v.detach().clone() for k, v in model.state_dict().items()},
                        settings=_settings(training, tb, used, task), reference=_reference(tb, rows, used, task),
                        loss=sum(losses) / len(losses))


def _true_labels(tb, i: int, task: str) -> Any:
    if task == "classify":
        return int(tb.labels[i])
    return [int(tb.original_ids[i, p]) for p in tb.mask_positions[i]]


def _settings(training: LocalTraining, tb, used: list[int], task: str) -> dict[str, Any]:
    facts = {"batch_size": len(used), "seq_lengths": [tb.lengths[i] for i in used],
             "labels": [_true_labels(tb, i, task) for i in used],
             "mask_positions": [tb.mask_positions[i] for i in used] if task == "mlm" else None}
    declare = [d for d in training.declare if not (task == "classify" and d == "mask_positions")]
    knowledge = declared_knowledge({k: v for k, v in facts.items() if v is not None}, declare)
    return {**{k: v for k, v in asdict(training).items() if k not in ("declare",)},
            "examples": len(used), "task": task, "defence": training.defence(),
            "mode": "train (dropout on)" if training.dropout else "eval (dropout off)",
            "knowledge": json.loads(json.dumps(knowledge.to_dict()))}


def _reference(tb, rows: list, used: list[int], task: str) -> Reference:
    return Reference(modality="text", texts=[rows[i][0] for i in used], labels=[_true_labels(tb, i, task) for i in used],
                     token_ids=[tb.original_ids[i, :tb.lengths[i]].tolist() for i in used],
                     masked_input_ids=[tb.input_ids[i, :tb.lengths[i]].tolist() for i in used])


_MODELS: dict[tuple, Any] = {}


def _target(model: str | None, task: str, num_labels: int, head_seed: int):
    key = (model, task, num_labels, head_seed)
    if key not in _MODELS:  # one copy per client process (a Ray actor keeps it between rounds)
        from ..text.models import load_text_model

        _MODELS[key] = load_text_model(model, task=task, num_labels=num_labels, head_seed=head_seed)
    return _MODELS[key]


def client_app(*, data: Callable[[int, int], Rows], model: str | None = None, task: str = "classify",
               num_labels: int = 2, head_seed: int = 0, training: LocalTraining = LocalTraining(),
               send_reference: bool = False, threads: int | None = 1) -> ClientApp:
    """A ClientApp that fine-tunes on `data(partition_id, server_round)` and replies for the audit.

    model/task/num_labels/head_seed: as for `load_text_model` (the round's weights replace the
    loaded ones). threads: torch threads per client process (None: leave torch's setting)."""
    training.validate()
    app = ClientApp()

    @app.train()
    def train(msg: Message, context: Any) -> Message:
        if threads is not None:
            torch.set_num_threads(threads)
        config = next(iter(msg.content.config_records.values()), None)
        arrays_key, arrays = next(iter(msg.content.array_records.items()))
        server_round = int(config.get("server-round", 0)) if config else 0
        partition = int(context.node_config.get("partition-id", context.node_id))
        target = _target(model, task, num_labels, head_seed)
        target.model.load_state_dict(arrays.to_torch_state_dict())
        local = training.configured(config)
        update = fine_tune(target, data(partition, server_round), replace(local, seed=local.seed + server_round))
        settings = {**update.settings, "partition": partition, "round": server_round}
        content = RecordDict({arrays_key: ArrayRecord(update.state),
                              "metrics": MetricRecord({"num-examples": settings["examples"], "train-loss": update.loss}),
                              SETTINGS_KEY: settings_record(settings)})
        if send_reference:
            content[REFERENCE_KEY] = ConfigRecord({"json": json.dumps(update.reference.to_dict())})
        return Message(content=content, reply_to=msg)

    return app
