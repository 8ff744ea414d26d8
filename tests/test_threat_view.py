"""The attacker's view is built from the public fields of a gradient file, never filtered: nothing
reachable from an Observation holds the victim's capture settings or a withheld fact."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import textleak
from textleak.text.models import load_text_model
from textleak.threat import PUBLIC_METADATA, Observation, public_metadata

SEED, MASK_PROB = 918273645, 0.3141


def _reachable(obj, seen=None):
    """Every key and non-tensor value reachable from `obj` (dataclass fields, mappings, sequences)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or torch.is_tensor(obj):
        return
    seen.add(id(obj))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield f.name
            yield from _reachable(getattr(obj, f.name), seen)
    elif isinstance(obj, dict) or hasattr(obj, "items"):
        for k, v in obj.items():
            yield k
            yield from _reachable(v, seen)
    elif isinstance(obj, (list, tuple, set)):
        yield obj
        for v in obj:
            yield from _reachable(v, seen)
    else:
        yield obj


def _as_rows(value):
    try:
        return [list(row) for row in value] if isinstance(value, (list, tuple)) else None
    except TypeError:  # a flat sequence (lengths, labels): not positions per example
        return None


def test_withheld_mask_positions_cannot_be_read_from_the_observation(tiny_bert):
    target = load_text_model(str(tiny_bert), task="mlm")
    cap = textleak.capture_gradients(target, ["the cat sat on the mat", "a red bird flew over the tree"],
                                     seed=SEED, mask_prob=MASK_PROB)
    file_meta = cap.gradients.metadata
    positions = file_meta["knowledge"]["mask_positions"]
    assert positions and file_meta["capture"]["victim"]["seed"] == SEED  # the file has them: the victim's copy

    obs = Observation.from_file(cap.gradients, unknown=["mask_positions"])
    found = list(_reachable(obs))
    assert obs.knowledge.mask_positions is None
    keys = list(_reachable(obs.metadata))  # (Knowledge names its fields: mask_positions is None there)
    for secret in ("mask_positions", "seed", "mask_prob", "victim", "loss_value", "knowledge", "clipped"):
        assert secret not in keys, secret
    assert SEED not in found and MASK_PROB not in found
    assert not any(_as_rows(v) == positions for v in found)
    # the same holds however the Observation is made: the constructor builds the public view too
    direct = Observation(cap.gradients.gradients, file_meta, obs.knowledge)
    assert direct.metadata == obs.metadata and SEED not in list(_reachable(direct))
    # and it is a copy: changing it leaves the file alone, and the reverse
    obs.metadata["model"]["name"] = "changed"
    assert file_meta["model"]["name"] != "changed"


def test_the_public_view_keeps_what_a_server_knows(tiny_bert):
    target = load_text_model(str(tiny_bert), task="classify")
    cap = textleak.capture_gradients(target, ["the cat sat"], labels=[1], defence="fedavg:2,0.1")
    view = Observation.from_file(cap.gradients).metadata
    assert view["model"] == cap.gradients.metadata["model"]
    assert view["capture"]["defence"]["params"] == {"local_steps": 2, "local_lr": 0.1, "minibatch": 0,
                                                        "shuffle": 0}
    assert view["capture"]["mode"] == "eval" and view["capture"]["clipping"] == {"max_norm": None}
    assert set(view) <= set(PUBLIC_METADATA) and set(view["capture"]) <= set(PUBLIC_METADATA["capture"])
    assert public_metadata(view) == view  # building twice changes nothing
    assert public_metadata({"modality": "text", "capture": {"victim": {"seed": 1}}, "anything": 2}) == \
        {"modality": "text", "capture": {}}


def test_the_metadata_schema_types_every_public_field_and_accepts_every_capture(tiny_bert):
    from textleak.capturing import TrainingStep
    from textleak.errors import GradientFileError
    from textleak.gradients import check_gradient_file
    from textleak.image.capture import capture_image_gradients
    from textleak.schema import metadata_schema

    def covered(public, schema, where):
        for key, part in public.items():
            assert key in schema.get("properties", {}), f"{where}.{key} is public but not in the schema"
            if part is not True:
                covered(part, schema["properties"][key], f"{where}.{key}")

    for modality in ("text", "image"):
        covered(PUBLIC_METADATA, metadata_schema(modality), "metadata")
    target = load_text_model(str(tiny_bert), task="classify")
    caps = [textleak.capture_gradients(target, ["the cat sat", "a dog"], labels=[1, 0], defence="noise:1e-3",
                                       step=TrainingStep(mode="train", clip=1.0, pad_to=8)),
            textleak.capture_gradients(target, ["the cat sat"], labels=[1], defence="fedavg:2,0.1"),
            capture_image_gradients("lenet", torch.rand(2, 1, 8, 8), labels=[1, 2], num_classes=10, channels=1,
                                    size=8, defence="noise:1e-2")]
    for cap in caps:
        check_gradient_file(cap.gradients)  # what the builder writes is what the reader accepts
    bad = dataclasses.replace(caps[0].gradients, metadata={**caps[0].gradients.metadata,
                                                           "capture": {**caps[0].gradients.metadata["capture"],
                                                                       "mode": "sleep"}})
    with pytest.raises(GradientFileError, match=r"metadata\.capture\.mode: 'sleep' is not one of"):
        check_gradient_file(bad)
