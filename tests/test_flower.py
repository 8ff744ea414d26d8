"""Flower: the server-side audit wrapper and the client helper, in process (a fake grid) and in
Flower's real simulation engine (2 clients, 1 round, a tiny random BERT)."""

from __future__ import annotations

import html
import json

import pytest
import torch

from textleak.errors import InputError

flwr = pytest.importorskip("flwr", reason="the Flower extra is not installed (pip install 'textleak[flower]')")

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402

from textleak.integrations.flower import (REFERENCE_KEY, SETTINGS_KEY, LeakageAudit, check_flower,  # noqa: E402
                                          client_update)
from textleak.integrations.flower_client import LocalTraining, client_app, fine_tune  # noqa: E402
from textleak.text.models import load_text_model  # noqa: E402

from conftest import make_tiny_model  # noqa: E402

# distinct words per sentence: repeated tokens make the tiny random model's span test ambiguous
ROWS = {0: [("the big dog ran", 1)], 1: [("a small red bird flew .", 0)]}


def test_flower_versions_outside_the_supported_range_get_one_line():
    assert check_flower() == flwr.__version__
    for bad in ("1.20.0", "2.0.0", "not-a-version"):
        with pytest.raises(InputError, match=r"needs flwr>=1.21,<2 .* found flwr " + bad):
            check_flower(bad)
    assert check_flower("1.21.0") == "1.21.0"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return str(make_tiny_model(tmp_path_factory.mktemp("fl-bert"), hidden=64, layers=2))


def test_one_sgd_step_update_is_the_gradient_and_settings_are_recorded(model_dir, one_thread):
    import textleak

    target = load_text_model(model_dir, task="classify")
    w0 = {k: v.clone() for k, v in target.model.state_dict().items()}
    cap = textleak.capture_gradients(target, [ROWS[0][0][0]], labels=[1])
    update = fine_tune(target, ROWS[0], LocalTraining(local_steps=1, lr=1.0, batch_size=1))
    names = list(cap.gradients.gradients)
    shared, kind, notes = client_update(w0, update.state, names, update.settings)
    assert kind == "update" and notes == []
    for n in names:
        g = cap.gradients.gradients[n]
        assert torch.allclose(shared[n], g, atol=1e-6 + 1e-4 * float(g.abs().max())), n
    s = update.settings
    assert (s["local_steps"], s["lr"], s["optimizer"], s["examples"], s["mode"]) == (1, 1.0, "sgd", 1, "eval (dropout off)")
    assert s["knowledge"]["batch_size"] == 1 and s["knowledge"]["labels"] is None  # labels are not declared
    assert update.reference.texts == [ROWS[0][0][0]] and update.reference.labels == [1]
    plain, kind, notes = client_update(w0, update.state, names, None)
    assert kind == "weight difference" and "no learning rate" in notes[0]
    assert torch.allclose(plain[names[0]], shared[names[0]], rtol=1e-4, atol=1e-7)  # lr 1, K 1
    with pytest.raises(InputError, match="DP noise needs max_grad_norm"):
        LocalTraining(noise_multiplier=1.0).validate()
    dp = fine_tune(target, ROWS[1], LocalTraining(max_grad_norm=1.0, noise_multiplier=0.5, optimizer="adamw"))
    assert dp.settings["defence"] == "dpsgd:1,0.5"


class Grid:
    """Just enough of flwr's Grid for a strategy's configure_train."""

    def get_node_ids(self):
        return [11, 22]


class Checked(FedAvg):
    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        assert all(SETTINGS_KEY not in r.content and REFERENCE_KEY not in r.content for r in replies)
        return super().aggregate_train(server_round, replies)


def test_the_wrapper_attacks_each_reply_and_hands_the_strategy_clean_replies(model_dir, tmp_path, one_thread,
                                                                             monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):  # what a running ServerApp process has set
        monkeypatch.setattr(TaskIdentity, name, 1)
    app = client_app(data=lambda partition, rnd: ROWS[partition], model=model_dir, send_reference=True,
                     training=LocalTraining(lr=1.0))
    audit = LeakageAudit(Checked(fraction_evaluate=0.0), model=model_dir, out_dir=tmp_path, say=None)
    start = ArrayRecord(load_text_model(model_dir, task="classify").model.state_dict())
    sent = audit.configure_train(1, start, flwr.app.ConfigRecord({"lr": 1.0}), Grid())
    replies = []
    for partition, msg in enumerate(sent):
        context = Context(run_id=1, node_id=msg.metadata.dst_node_id, node_config={"partition-id": partition},
                          state=RecordDict(), run_config={})
        replies.append(app(msg, context))
    # a client that sends only its weights: attacked as a plain gradient, with a note
    bare = Message(content=RecordDict({"arrays": replies[1].content["arrays"],
                                       "metrics": MetricRecord({"num-examples": 1, "train-loss": 0.0})}),
                   reply_to=sent[1])
    arrays, metrics = audit.aggregate_train(1, replies + [bare])
    assert arrays is not None and metrics is not None
    first, second, third = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    for rec, partition in ((first, 0), (second, 1)):
        assert rec["round"] == 1 and rec["partition"] == partition and rec["settings"]["lr"] == 1.0
        # an update (K = 1 here) is read by exact's update variant and certified by simulating the step
        assert rec["method"] == "exact-update" and rec["certified"] and rec["metrics"]["exact_match"] == 1.0
        assert rec["references"] == [ROWS[partition][0][0]] and len(rec["recovered"]) == 1
        assert rec["shared"] == "update"
    assert third["shared"] == "weight difference" and "metrics" not in third
    assert any("no learning rate" in n for n in third["notes"]) and third["references"] is None
    from textleak.report.federation import render_federation_html

    page = html.unescape(render_federation_html(audit.records))  # the reply without settings: a third client
    assert ("3 clients over 1 round, each update from 1 local SGD step at lr 1 on 1 sentence: an honest-but-curious "
            "server recovers 100% of the words (ROUGE-1) of the clients' private sentences, and 2 of 2 sentences "
            "exactly") in page and "settings unknown" in page


def test_a_real_flower_simulation(model_dir, tmp_path):
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    audits = []
    server = ServerApp()

    @server.main()
    def main(grid, context):
        audit = LeakageAudit(FedAvg(fraction_evaluate=0.0), model=model_dir, out_dir=tmp_path, say=None)
        audits.append(audit)
        initial = ArrayRecord(load_text_model(model_dir, task="classify").model.state_dict())
        audit.start(grid=grid, initial_arrays=initial, num_rounds=1,
                    train_config=flwr.app.ConfigRecord({"lr": 1.0, "local-steps": 1}))

    clients = client_app(data=lambda partition, rnd: ROWS[partition], model=model_dir, send_reference=True)
    run_simulation(server_app=server, client_app=clients, num_supernodes=2,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 1, "include_dashboard": False, "log_to_driver": False}})
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == 2 and audits[0].records == records
    assert sorted(r["partition"] for r in records) == [0, 1]
    assert all(r["method"] == "exact-update" and r["metrics"]["exact_match"] == 1.0 for r in records)
    assert all(r["settings"]["local_steps"] == 1 and r["settings"]["lr"] == 1.0 for r in records)
    # the recipe's report reads the same file back: every update is counted (a sweep-record check
    # once left them all out and reported "0 updates")
    from textleak.report.federation import federation_summary
    from textleak.schema import FEDERATION_RECORD
    from textleak.sweep import read_jsonl

    summary = federation_summary(read_jsonl(tmp_path / "records.jsonl", schema=FEDERATION_RECORD))
    assert summary["updates"] == 2 and summary["exact_sentences"] == 2
