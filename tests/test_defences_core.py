"""Defences: spec parsing, each transformation's defining property, capture and training use."""

from __future__ import annotations


import pytest
import torch

from textleak.defences import DEFENCES, apply_to_model_grads, parse_defence, shared_gradients
from textleak.errors import InputError

from _defences_tiny import make_tiny_bert


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grads(seed: int = 0) -> dict[str, torch.Tensor]:
    g = gen(seed)
    return {"a.weight": torch.randn(40, 50, generator=g), "b.bias": torch.randn(30, generator=g)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from textleak.text.models import load_text_model

    folder = make_tiny_bert(tmp_path_factory.mktemp("tiny"))
    return folder, load_text_model(str(folder), task="classify")


# -- specs ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,name,values", [
    ("noise:1e-3", "noise", (1e-3,)), ("laplace:1e-2", "laplace", (1e-2,)), ("prune:0.5", "prune", (0.5,)),
    ("fp16", "fp16", ()), ("bf16", "bf16", ()), ("int8", "int8", ()), ("none", "none", ()),
    ("dpsgd:1.0,1.1", "dpsgd", (1.0, 1.1)), ("fedavg:4", "fedavg", (4, 1e-2, 0, 0)),
    ("fedavg:4,0.1,2", "fedavg", (4, 0.1, 2, 0)), ("fedavg:4,0.1,2,1", "fedavg", (4, 0.1, 2, 1)),
    ("fedadamw:2", "fedadamw", (2, 1e-4, 0, 0.0, 0)), ("batch:8", "batch", (8,)),
    (" NOISE:0.1 ", "noise", (0.1,)),
])
def test_specs_parse(spec, name, values):
    d = parse_defence(spec)
    assert d.name == name and d.values == pytest.approx(values)
    assert parse_defence(d.spec).values == d.values  # the recorded spec reads back
    assert d.describe()["spec"] == d.spec


@pytest.mark.parametrize("spec,words", [
    ("noise:2", ["variance 2 is out of range", "(0, 1]"]), ("noise:0", ["out of range"]),
    ("prune:1.5", ["fraction", "[0, 0.999]"]), ("fedavg:0", ["local_steps", "[1, 1000]"]),
    ("batch:2.5", ["integer"]), ("noise:abc", ["must be a number"]), ("noise", ["needs variance"]),
    ("fp16:3", ["too many arguments"]), ("dpsgd:-1", ["max_grad_norm"]),
    ("blur:3", ["unknown defence", "noise", "prune", "dpsgd"]),
])
def test_bad_specs_are_one_line_errors(spec, words):
    with pytest.raises(InputError) as err:
        parse_defence(spec)
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_registry_names():
    assert {"noise", "laplace", "prune", "fp16", "bf16", "int8", "dpsgd", "fedavg", "batch", "none"} <= set(DEFENCES.names())


# -- transformations -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["noise", "laplace"])
def test_noise_has_the_declared_variance_and_is_seeded(name):
    zeros = {"w": torch.zeros(200_000)}
    out = parse_defence(f"{name}:1e-2").apply(zeros, gen(1))["w"]
    assert out.var().item() == pytest.approx(1e-2, rel=0.03)
    assert out.mean().abs().item() < 1e-3
    assert torch.equal(out, parse_defence(f"{name}:1e-2").apply(zeros, gen(1))["w"])
    assert not torch.equal(out, parse_defence(f"{name}:1e-2").apply(zeros, gen(2))["w"])
    assert zeros["w"].abs().sum() == 0  # the input is not modified
    if name == "laplace":  # heavier tails than a Gaussian: excess kurtosis 3
        z = out / out.std()
        assert (z.pow(4).mean().item() - 3) == pytest.approx(3, abs=0.4)


def test_prune_zeros_the_smallest_fraction_per_tensor():
    g = grads()
    out = parse_defence("prune:0.3").apply(g, gen())
    for k in g:
        n = g[k].numel()
        zeroed = (out[k] == 0)
        assert int(zeroed.sum()) == int(0.3 * n)
        kept = g[k][~zeroed].abs()
        assert kept.min() >= g[k][zeroed].abs().max()
        assert torch.equal(out[k][~zeroed], g[k][~zeroed])


def test_half_precision_rounds_and_underflows():
    g = {"w": torch.tensor([1.0 + 2 ** -12, 1e-9, 3.0, -2.5e-3])}
    out = parse_defence("fp16").apply(g, gen())["w"]
    assert out.dtype == torch.float32
    assert out[0] == 1.0 and out[1] == 0.0 and out[2] == 3.0
    assert torch.equal(out, out.half().float())
    b = parse_defence("bf16").apply(g, gen())["w"]
    assert b[1] != 0 and torch.equal(b, b.bfloat16().float())


def test_int8_has_255_levels_and_bounded_error():
    g = grads()
    out = parse_defence("int8").apply(g, gen())
    for k in g:
        scale = g[k].abs().max() / 127
        assert len(torch.unique(torch.round(out[k] / scale))) <= 255
        assert (out[k] - g[k]).abs().max() <= scale / 2 + 1e-7


# -- capture-stage defences on a real (tiny) model -------------------------------------------------
def loss_fn(target, texts, labels):
    enc = target.tokenizer(texts, padding=True, return_tensors="pt")
    y = torch.tensor(labels)

    def loss_of(rows):
        rows = list(rows)
        return target.model(**{k: v[rows] for k, v in enc.items()}, labels=y[rows]).loss

    return loss_of


def test_dpsgd_clips_each_example_then_averages(tiny):
    _, target = tiny
    loss_of = loss_fn(target, ["a good film .", "bad .", "so dull and long ."], [1, 0, 0])
    plain = shared_gradients("none", target.model, loss_of, 3, gen())
    from textleak.defences.base import global_norm
    from textleak.defences.sharing import batch_gradients

    per = [batch_gradients(target.model, loss_of, 3).example(i) for i in range(3)]
    norms = [float(global_norm(p)) for p in per]
    c = min(norms) / 2  # every example is clipped
    out = shared_gradients(f"dpsgd:{c},0", target.model, loss_of, 3, gen())
    expect = {k: sum(p[k] * (c / (n + 1e-6)) for p, n in zip(per, norms)) / 3 for k in plain}
    for k in plain:
        torch.testing.assert_close(out[k], expect[k], rtol=1e-4, atol=1e-7)
    noisy = shared_gradients(f"dpsgd:{c},2", target.model, loss_of, 3, gen())
    diff = torch.cat([(noisy[k] - out[k]).flatten() for k in out])
    assert diff.std().item() == pytest.approx(2 * c / 3, rel=0.05)


def test_dpsgd_epsilon_from_opacus():
    pytest.importorskip("opacus")
    from opacus.accountants import RDPAccountant

    d = parse_defence("dpsgd:1.0,1.1")
    acc = RDPAccountant()
    for _ in range(100):
        acc.step(noise_multiplier=1.1, sample_rate=0.01)
    assert d.epsilon(steps=100, sample_rate=0.01, delta=1e-5) == pytest.approx(acc.get_epsilon(1e-5))
    assert parse_defence("dpsgd:1.0,2.0").epsilon(steps=100, sample_rate=0.01, delta=1e-5) < acc.get_epsilon(1e-5)


def test_fedavg_update_is_the_gradient_for_one_step_and_restores_weights(tiny):
    _, target = tiny
    loss_of = loss_fn(target, ["a good film ."], [1])
    before = {k: v.clone() for k, v in target.model.state_dict().items()}
    plain = shared_gradients("none", target.model, loss_of, 1, gen())
    one = shared_gradients("fedavg:1,0.5", target.model, loss_of, 1, gen())
    four = shared_gradients("fedavg:4,0.5", target.model, loss_of, 1, gen())
    for k in plain:
        torch.testing.assert_close(one[k], plain[k], rtol=1e-3, atol=1e-6)
    assert max((four[k] - plain[k]).abs().max().item() for k in plain) > 1e-4  # the local drift
    assert all(torch.equal(before[k], v) for k, v in target.model.state_dict().items())


def test_batch_defence_checks_the_batch_size(tiny):
    _, target = tiny
    with pytest.raises(InputError, match="batches of 2"):
        shared_gradients("batch:2", target.model, loss_fn(target, ["x ."], [1]), 1, gen())


def test_capture_records_the_defence_and_recover_reports_it(tiny):
    from textleak import capture_gradients, recover

    _, target = tiny
    cap = capture_gradients(target, ["a good film ."], labels=[1], defence="prune:0.5")
    meta = cap.gradients.metadata["capture"]["defence"]
    assert meta == {"spec": "prune:0.5", "name": "prune", "stage": "gradient", "shares": "gradient",
                    "params": {"fraction": 0.5}}
    plain = capture_gradients(target, ["a good film ."], labels=[1])
    k = "classifier.weight"
    assert torch.equal(cap.gradients.gradients[k], parse_defence("prune:0.5").apply(plain.gradients.gradients, gen())[k])
    res = recover(gradients=cap.gradients, model=target, progress=False, options={"steps": 1})
    assert res.details["defence"]["spec"] == "prune:0.5"
    assert "defence applied by the victim: prune:0.5 (shared: gradient)" in res.summary()


def test_cli_capture_defence(tiny, tmp_path, capsys):
    from textleak.cli import main
    from textleak.gradients import load_gradients

    folder, _ = tiny
    out = tmp_path / "g.pt"
    base = ["capture", "--model", str(folder), "--task", "classify", "--text", "good .", "--labels", "1",
            "--out", str(out)]
    assert main(base + ["--defence", "noise:5"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "variance 5 is out of range" in err and not out.exists()
    assert main(base + ["--defence", "dpsgd:1.0,0.5"]) == 0
    assert load_gradients(out).metadata["capture"]["defence"]["params"] == {"max_grad_norm": 1.0, "noise_multiplier": 0.5}


# -- inside training ------------------------------------------------------------------------
def test_apply_to_model_grads_in_place(tiny):
    _, target = tiny
    model = target.model
    model.zero_grad()
    loss_fn(target, ["a good film ."], [1])([0]).backward()
    before = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    apply_to_model_grads(model, "prune:0.9", gen())
    expect = parse_defence("prune:0.9").apply(before, gen())
    assert all(torch.equal(p.grad, expect[n]) for n, p in model.named_parameters() if p.grad is not None)
    with pytest.raises(InputError, match="local steps"):
        apply_to_model_grads(model, "fedavg:2", gen())
    with pytest.raises(InputError, match="per-example"):
        apply_to_model_grads(model, "dpsgd:1.0,1.0", gen(), examples=4)
    apply_to_model_grads(model, "dpsgd:1.0,0", gen(), examples=1)
    from textleak.defences.base import global_norm

    assert float(global_norm({n: p.grad for n, p in model.named_parameters() if p.grad is not None})) <= 1.0 + 1e-5
    model.zero_grad()


def test_fedavg_capture_is_recorded_as_an_update_and_attacked_as_a_gradient(tiny):
    from textleak import capture_gradients, recover

    _, target = tiny
    cap = capture_gradients(target, ["a good film ."], labels=[1], defence="fedavg:3,0.1")
    assert cap.gradients.metadata["capture"]["defence"]["shares"] == "update"
    res = recover(gradients=cap.gradients, model=target, attack="dlg", progress=False, options={"steps": 1})
    assert res.method == "dlg" and "(shared: update)" in res.summary()
