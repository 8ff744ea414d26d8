"""The image CLI: capture/recover round trip, pictures, and one-line errors for bad input."""

import numpy as np
import pytest
import torch
from PIL import Image

from textleak.cli import main
from textleak.gradients import GradientFile, load_gradients


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add overhead


@pytest.fixture
def picture(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "x.png"
    Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(path)
    return path


TINY = ["--image-size", "8", "--num-labels", "10"]


def one_line_error(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("textleak: error:") and "\n" not in err, err
    return err


def test_capture_and_recover_round_trip(tmp_path, picture, capsys):
    grads = tmp_path / "grads.pt"
    assert main(["capture", "--model", "lenet", "--image", str(picture), "--label", "3", *TINY,
                 "--out", str(grads)]) == 0
    meta = load_gradients(grads).metadata
    assert meta["modality"] == "image" and meta["model"]["init_seed"] == 0
    assert meta["extra"]["normalisation"] == {"mean": [0.0] * 3, "std": [1.0] * 3}
    assert meta["knowledge"]["labels"] is None  # labels are not declared by default
    out, fig, js = tmp_path / "recovered.png", tmp_path / "grid.png", tmp_path / "r.json"
    assert main(["recover", "--grads", str(grads), "--attack", "idlg", "--steps", "30", "--reference", str(picture),
                 "--out", str(out), "--figure", str(fig), "--quiet"]) == 0
    assert "label 3" in capsys.readouterr().out
    assert Image.open(out).size == (8, 8) and Image.open(fig).format == "PNG"
    assert main(["recover", "--grads", str(grads), "--attack", "dlg", "--steps", "2", "--out", str(js),
                 "--quiet"]) == 0
    assert '"modality": "image"' in js.read_text()


def test_dataset_capture_in_batches(tmp_path):
    out = tmp_path / "g.safetensors"
    assert main(["capture", "--dataset", "digits", "--index", "0", "1", "2", "--batch-size", "2", "--channels", "1",
                 *TINY, "--declare", "batch_size", "labels", "--out", str(out)]) == 0
    first = load_gradients(tmp_path / "g-000.safetensors")
    assert first.metadata["knowledge"]["labels"] == [0, 1]
    assert (tmp_path / "g-001.safetensors").exists()


def test_wrong_channels_is_one_line_and_writes_nothing(tmp_path, picture, capsys):
    out = tmp_path / "g.pt"
    err = one_line_error(capsys, main(["capture", "--image", str(picture), "--channels", "1", *TINY,
                                       "--out", str(out)]))
    assert "channels" in err and not out.exists()


def test_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png at all")
    assert "cannot read image" in one_line_error(capsys, main(["capture", "--image", str(bad), "--out",
                                                               str(tmp_path / "g.pt")]))
    assert "does not exist" in one_line_error(capsys, main(["capture", "--image", str(tmp_path / "nope.png"),
                                                            "--out", str(tmp_path / "g.pt")]))


def test_image_gradients_given_to_another_model(tmp_path, picture, capsys):
    grads = tmp_path / "grads.pt"
    assert main(["capture", "--image", str(picture), *TINY, "--out", str(grads)]) == 0
    capsys.readouterr()
    err = one_line_error(capsys, main(["recover", "--grads", str(grads), "--model", str(tmp_path), "--quiet"]))
    assert "not an image model" in err
    err = one_line_error(capsys, main(["recover", "--grads", str(grads), "--model", "resnet-mini", "--quiet"]))
    assert "another model" in err


def test_text_gradients_given_to_an_image_model(tmp_path, capsys):
    grads = tmp_path / "text.pt"
    GradientFile({"bert.pooler.dense.weight": torch.zeros(2, 2)},
                 {"modality": "text", "model": {"name": "tiny-bert", "task": "mlm", "head_seed": 0},
                  "knowledge": {"batch_size": 1}}).save(grads)
    err = one_line_error(capsys, main(["recover", "--grads", str(grads), "--model", "lenet", "--quiet"]))
    assert "text model" in err and "image model" in err
    err = one_line_error(capsys, main(["recover", "--grads", str(grads), "--attack", "idlg", "--quiet"]))
    assert "does not handle text" in err
