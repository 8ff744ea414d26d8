"""The optimisation attacks are presets of one template; `auto` is a composite of configured
attack instances whose options reach every stage, each checked before it runs."""

from __future__ import annotations

import pytest
import torch

import textleak
from textleak.attacks import ATTACKS
from textleak.attacks.auto import Auto
from textleak.attacks.optimisation import GradientMatching
from textleak.cli import _attack_options, build_parser
from textleak.errors import InputError, MissingKnowledgeError
from textleak.gradients import GradientFile
from textleak.image.capture import capture_image_gradients
from textleak.text.models import load_text_model
from textleak.threat import Observation

PRESETS = {"dlg": ("text", "image"), "tag": ("text",), "lamp": ("text",), "idlg": ("image",), "ig": ("image",)}


@pytest.fixture(scope="module")
def classifier(tiny_bert):
    return load_text_model(str(tiny_bert), task="classify")


@pytest.fixture(scope="module")
def capture(classifier):
    return textleak.capture_gradients(classifier, ["the cat sat"], labels=[1])


def test_the_optimisation_attacks_are_presets_of_one_template():
    for name, modalities in PRESETS.items():
        cls = ATTACKS.get(name)
        assert issubclass(cls, GradientMatching) and cls.name == name and cls.modalities == modalities
        assert set(cls.DEFAULTS) == set(modalities)
    assert ATTACKS.get("dlg")().match_config("text").steps == 30
    assert ATTACKS.get("tag")().match_config("text").distance == "tag"
    assert ATTACKS.get("ig")(steps=7).match_config("image").steps == 7


def test_preflight_refuses_before_any_work(classifier, capture, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("work started")

    monkeypatch.setattr(classifier, "matching_problem", never)
    obs = Observation.from_file(capture.gradients, unknown=["seq_lengths"])
    with pytest.raises(MissingKnowledgeError, match="sequence lengths"):
        ATTACKS.get("dlg")().run(obs, classifier)
    embeddings_only = {n: g for n, g in capture.gradients.gradients.items() if "word_embeddings" in n}
    obs = Observation.from_file(GradientFile(embeddings_only, capture.gradients.metadata))
    for name in ("dlg", "tag", "lamp"):
        with pytest.raises(MissingKnowledgeError, match="above the word embeddings"):
            ATTACKS.get(name)().preflight(obs, classifier)
    with pytest.raises(MissingKnowledgeError, match="no attack applies: lamp: .*; tag: .*; dlg: "):
        Auto(stages=[ATTACKS.get(name)() for name in ("lamp", "tag", "dlg")]).preflight(obs, classifier)


def test_idlg_preflight_needs_the_last_layer():
    cap = capture_image_gradients("lenet", torch.rand(1, 1, 8, 8), labels=[2], num_classes=10, channels=1, size=8)
    from textleak.image.modality import load_target

    target = load_target(None, cap.gradients.metadata)
    body = {n: g for n, g in cap.gradients.gradients.items() if not n.startswith("classifier")}
    obs = Observation.from_file(GradientFile(body, cap.gradients.metadata))
    for name in ("idlg", "ig"):
        with pytest.raises(MissingKnowledgeError, match="last layer"):
            ATTACKS.get(name)().preflight(obs, target)
    ATTACKS.get("dlg")().preflight(obs, target)  # DLG optimises the labels: it can run


def test_auto_options_reach_every_stage():
    auto = Auto(seed=3, steps=5, exact={"widen": 2}, lamp={"prior": "none", "proposals": 1}, dlg={"steps": 1})
    exact, positions, beyond, batch, likelihood, lamp, tag, dlg = auto.stages_for("text")
    assert (exact.name, exact.widen, exact.seed) == ("exact", 2, 3)
    assert (positions.name, positions.seed) == ("positions", 3)
    assert (beyond.name, beyond.seed) == ("beyond_rank", 3)
    assert (likelihood.name, likelihood.seed) == ("likelihood", 3)  # runs only on noisy gradients
    assert (batch.name, batch.seed, batch.prior) == ("likelihood_batch", 3, "bigram")  # noisy batches of 2+
    assert (lamp.steps, lamp.prior, lamp.proposals, lamp.seed) == (5, "none", 1, 3)
    assert (tag.steps, dlg.steps) == (5, 1)
    assert [s.name for s in auto.stages_for("image")] == ["idlg"] and auto.stages_for("image")[0].steps == 5
    with pytest.raises(InputError, match="auto's stage 'exact'"):
        Auto(exact={"steps": 3})
    with pytest.raises(InputError, match="bad option for attack 'auto'"):
        textleak.recover(gradients=GradientFile({}, {"modality": "text"}), attack="auto", options={"tv": 1})


def test_auto_runs_configured_instances_and_says_what_it_skipped(classifier, capture):
    head = {n: g for n, g in capture.gradients.gradients.items() if n.startswith(("classifier", "bert.pooler"))}
    gf = GradientFile(head, capture.gradients.metadata)
    res = textleak.recover(gradients=gf, model=classifier, progress=False,
                           options={"stages": [ATTACKS.get("exact")(), ATTACKS.get("dlg")(steps=1)]})
    assert res.method == "dlg" and res.details["tried"][0]["attack"] == "exact"
    assert res.config["steps"] == 1


def test_cli_options_name_a_stage():
    args = build_parser().parse_args(["recover", "--grads", "g.pt", "--steps", "4", "--option", "exact.widen=2",
                                      "--option", "lamp.prior=none", "--option", "restrict=false"])
    assert _attack_options(args) == {"steps": 4, "exact": {"widen": 2}, "lamp": {"prior": "none"}, "restrict": False}
    with pytest.raises(InputError, match="KEY=VALUE"):
        _attack_options(build_parser().parse_args(["recover", "--grads", "g.pt", "--option", "widen"]))
