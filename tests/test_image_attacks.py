"""Image attacks on tiny LeNets: recovery quality, label inference, IG's constraints, JSON."""

import json
import random

import numpy as np
import pytest
import torch

from textleak import RecoveryResult, recover
from textleak.attacks.idlg import infer_labels
from textleak.errors import ModelMismatchError
from textleak.image.capture import capture_image_gradients
from textleak.image.data import load_dataset_images
from textleak.image.models import load_image_model, target_from_module
from textleak.image.modality import load_target
from textleak.threat import Knowledge, Observation


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


def tiny_capture(indices=(0,), labels=None, seed=0, **kw):
    kw = {"num_classes": 10, "channels": 1, "size": 8, **kw}
    return capture_image_gradients("lenet", load_dataset_images("digits", list(indices)), labels=labels,
                                   init_seed=seed, **kw)


def test_lenet_is_dlgs_architecture_and_seeded():
    target = load_image_model("lenet", init_seed=3)
    shapes = {n: tuple(p.shape) for n, p in target.model.named_parameters()}
    assert shapes["features.0.weight"] == (12, 3, 5, 5)
    assert shapes["features.4.weight"] == (12, 12, 5, 5)
    assert shapes["classifier.weight"] == (100, 768)  # 12 x 8 x 8 after strides 2, 2, 1
    assert all(float(p.detach().abs().max()) <= 0.5 for p in target.model.parameters())
    state = torch.get_rng_state()
    again = load_image_model("lenet", init_seed=3)
    assert torch.equal(state, torch.get_rng_state())  # building a model leaves the caller's RNG alone
    assert again.spec.weights_hash == target.spec.weights_hash
    assert load_image_model("lenet", init_seed=4).spec.weights_hash != target.spec.weights_hash
    assert target.output_layer() == ("classifier.weight", "classifier.bias")


def test_resnet_mini_has_no_relu_or_maxpool():
    model = load_image_model("resnet-mini", num_classes=10, size=16).model
    kinds = {type(m).__name__ for m in model.modules()}
    assert not kinds & {"ReLU", "MaxPool2d"}
    assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)


def test_idlg_recovers_a_tiny_digit():
    cap = tiny_capture()
    result = recover(gradients=cap.gradients, attack="idlg", reference=cap.reference,
                     options={"steps": 40}, progress=False)
    assert result.metrics["mean"]["psnr"] > 35
    assert result.metrics["mean"]["label_accuracy"] == 1.0
    assert result.assumed["labels"].startswith("recovered analytically")
    assert result.details["inferred_labels"] == cap.reference.labels


def test_dlg_batch_of_two_gives_sane_json(tmp_path):
    cap = tiny_capture(indices=(0, 1))
    result = recover(gradients=cap.gradients, attack="dlg", reference=cap.reference,
                     options={"steps": 3, "snapshot_at": (0, 3)}, progress=False)
    assert len(result.prediction["images"]) == 2 and result.assumed["labels"] == "optimised jointly"
    assert [s["step"] for s in result.snapshots] == [0, 3]
    path = tmp_path / "r.json"
    result.to_json(path)
    back = RecoveryResult.from_json(path)
    assert np.asarray(back.prediction["images"]).shape == (2, 1, 8, 8)
    assert json.loads(path.read_text())["metrics"]["per_example"][1]["prediction_index"] in (0, 1)
    assert "mse" in back.summary()


def test_labels_from_the_last_layer_for_a_batch():
    random.seed(0)
    for seed, labels in enumerate([[0, 1, 2], [3, 3, 5], [2, 2]]):
        cap = tiny_capture(indices=range(4 * seed, 4 * seed + len(labels)), labels=labels, seed=seed,
                           channels=3, size=32)
        target = load_target(None, cap.gradients.metadata)
        obs = Observation(cap.gradients.gradients, cap.gradients.metadata, Knowledge(batch_size=len(labels)))
        assert infer_labels(obs, target) == sorted(labels)


def test_inverting_gradients_keeps_pixels_in_range_and_declares_its_prior():
    cap = tiny_capture(mean=[0.5], std=[0.25])
    result = recover(gradients=cap.gradients, attack="ig", reference=cap.reference,
                     options={"steps": 5, "tv": 0.01}, progress=False)
    assert result.config["distance"] == "cosine" and result.config["lr_decay"]
    assert "total variation" in result.assumed["prior"]
    assert all(np.isfinite(result.history))


def test_user_module_round_trip_and_weight_mismatch():
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    target = target_from_module(module, (1, 4, 4))
    cap = capture_image_gradients(target, torch.rand(1, 1, 4, 4), labels=[2])
    result = recover(gradients=cap.gradients, model=module, attack="idlg", reference=cap.reference,
                     options={"steps": 2}, progress=False)
    assert result.prediction["labels"] == [2]
    with pytest.raises(ModelMismatchError):
        recover(gradients=tiny_capture().gradients, model=load_image_model("lenet", num_classes=10, channels=1,
                                                                            size=8, init_seed=1), progress=False)


def test_box_projection_and_tv_prior_of_the_problem():
    cap = tiny_capture(mean=[0.5], std=[0.25])
    target = load_target(None, cap.gradients.metadata)
    obs = Observation(cap.gradients.gradients, cap.gradients.metadata, Knowledge(batch_size=1))
    problem = target.matching_problem(obs, labels=[0], tv=0.5, box=True)
    variables = problem.init(torch.Generator().manual_seed(0))
    with torch.no_grad():
        variables["pixels"].mul_(10)
    assert float(problem.regulariser(variables).detach()) > 0
    problem.project(variables)
    pixels = variables["pixels"].detach()
    assert float(pixels.min()) >= -2.0 and float(pixels.max()) <= 2.0  # (0-.5)/.25, (1-.5)/.25
    assert "label_logits" not in variables
    free = target.matching_problem(obs)
    assert free.regulariser(variables) == 0.0 and free.assumed["labels"] == "optimised jointly"
