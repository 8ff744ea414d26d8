"""Image loading and fitting to a model's input."""

import numpy as np
import pytest
import torch

from textleak.errors import InputError
from textleak.image.capture import capture_image_gradients
from textleak.image.data import as_image, fit_image, load_dataset_images, read_images


def test_digits_upsampled_and_replicated_to_rgb():
    found = load_dataset_images("digits", [5])
    assert found.labels == [5] and found.images[0].shape == (1, 8, 8)
    image = fit_image(found.images[0], (3, 32, 32))
    assert image.shape == (3, 32, 32) and torch.equal(image[0], image[2])
    assert 0 <= float(image.min()) and float(image.max()) <= 1


def test_sample_image_crops_are_distinct_squares():
    found = load_dataset_images("sample-images", [0, 1, 2])
    assert all(im.shape[1] == im.shape[2] for im in found.images)
    assert not torch.equal(fit_image(found.images[0], (3, 32, 32)), fit_image(found.images[2], (3, 32, 32)))
    with pytest.raises(InputError):
        load_dataset_images("sample-images", [10_000])


def test_non_square_images_are_centre_cropped():
    image = torch.zeros(3, 10, 30)
    image[:, :, 10:20] = 1
    assert torch.allclose(fit_image(image, (3, 5, 5)), torch.ones(3, 5, 5))


@pytest.mark.parametrize("bad", [np.zeros((2, 8, 8)), np.zeros((4, 8, 8)), np.zeros(8), np.zeros((1, 1, 8, 8, 1)),
                                 np.full((8, 8), 2.0), np.full((8, 8), np.nan)])
def test_bad_arrays_are_input_errors(bad):
    with pytest.raises(InputError):
        as_image(bad)


def test_wrong_channels_and_labels_through_the_api():
    with pytest.raises(InputError, match="channels"):
        capture_image_gradients("lenet", torch.rand(3, 8, 8), channels=1, size=8, num_classes=10)
    with pytest.raises(InputError, match="outside"):
        capture_image_gradients("lenet", torch.rand(1, 8, 8), labels=[10], channels=1, size=8, num_classes=10)
    with pytest.raises(InputError, match="labels for"):
        capture_image_gradients("lenet", torch.rand(2, 1, 8, 8), labels=[1], channels=1, size=8, num_classes=10)


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="no image"):
        read_images(tmp_path)


def test_hugging_face_image_folder_with_class_labels(tmp_path):
    from PIL import Image

    for cls, value in (("cat", 0), ("dog", 255)):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((6, 6, 3), value, dtype=np.uint8)).save(tmp_path / cls / "a.png")
    found = load_dataset_images(f"hf:{tmp_path}", [0, 1])
    assert sorted(found.labels) == [0, 1] and found.images[0].shape == (3, 6, 6)
    with pytest.raises(InputError, match="not available offline"):
        load_dataset_images("hf:no-such-dataset-xyz", [0])
