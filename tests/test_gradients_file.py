import pickle

import pytest
import torch

from textleak.errors import GradientFileError
from textleak.gradients import FORMAT_VERSION, GradientFile, load_gradients, save_gradients


def _gf() -> GradientFile:
    return GradientFile({"layer.weight": torch.randn(3, 4), "layer.bias": torch.randn(3)},
                        {"modality": "text", "model": {"name": "m", "task": "mlm"}, "knowledge": {"batch_size": 1}})


@pytest.mark.parametrize("name", ["grads.pt", "grads.safetensors"])
def test_round_trip_keeps_tensors_and_metadata(tmp_path, name):
    gf = _gf()
    save_gradients(tmp_path / name, gf)
    back = load_gradients(tmp_path / name)
    assert set(back.gradients) == set(gf.gradients)
    for k in gf.gradients:
        assert torch.equal(back.gradients[k], gf.gradients[k])
    assert back.metadata["model"] == gf.metadata["model"]
    assert back.metadata["version"] == FORMAT_VERSION


def _expect(path, words):
    with pytest.raises(GradientFileError) as err:
        load_gradients(path)
    msg = str(err.value)
    assert "\n" not in msg and words in msg, msg


def test_missing_empty_truncated_and_garbage_files(tmp_path):
    _expect(tmp_path / "nope.pt", "does not exist")
    (tmp_path / "empty.pt").write_bytes(b"")
    _expect(tmp_path / "empty.pt", "is empty")
    save_gradients(tmp_path / "g.pt", _gf())
    data = (tmp_path / "g.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "cut.pt", "corrupt or truncated")
    (tmp_path / "junk.pt").write_bytes(b"hello, not a tensor file" * 10)
    _expect(tmp_path / "junk.pt", "not a textleak gradient file (neither")
    save_gradients(tmp_path / "g.safetensors", _gf())
    data = (tmp_path / "g.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 20])
    _expect(tmp_path / "cut.safetensors", "not a readable safetensors")


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": "textleak.gradients", "gradients": {"w": torch.ones(1)}, "obj": Evil()}, tmp_path / "evil.pt")
    _expect(tmp_path / "evil.pt", "unsafe")
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"a": 1}))
    _expect(tmp_path / "raw.pkl", "not a textleak gradient file")


def test_foreign_or_future_files_and_nan(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "plain.pt")
    _expect(tmp_path / "plain.pt", "not a textleak gradient file")
    gf = _gf()
    save_gradients(tmp_path / "v.pt", gf)
    payload = torch.load(tmp_path / "v.pt", weights_only=True)
    payload["metadata"] = payload["metadata"].replace(f'"version": {FORMAT_VERSION}', '"version": 99')
    torch.save(payload, tmp_path / "v99.pt")
    _expect(tmp_path / "v99.pt", "version 99")
    payload = torch.load(tmp_path / "v.pt", weights_only=True)
    payload["gradients"]["layer.bias"][0] = float("nan")
    torch.save(payload, tmp_path / "nan.pt")
    _expect(tmp_path / "nan.pt", "NaN or infinite values in layer.bias")


def test_saving_nan_gradients_refuses_and_writes_nothing(tmp_path):
    gf = _gf()
    gf.gradients["layer.weight"][0, 0] = float("inf")
    with pytest.raises(GradientFileError):
        save_gradients(tmp_path / "g.pt", gf)
    assert not (tmp_path / "g.pt").exists()
