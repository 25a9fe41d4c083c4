"""Image sources: bundled sets, folders, globs, odd modes, junk files."""

from __future__ import annotations

import os
import pickle
import signal
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepvit_diag.analysis import analyze
from deepvit_diag.errors import DiagError
from deepvit_diag.images import BUNDLED_SETS, ImageSet, _Transformed, default_image_set, open_images
from deepvit_diag.preprocessing import to_rgb


def test_bundled_sets_load_offline():
    photos = open_images("photos")
    assert len(photos) == 11
    images = list(photos)
    assert all(img.mode == "RGB" and min(img.size) >= 256 for img in images)
    digits = open_images("digits-test", limit=7)
    assert len(digits) == 7 and all(img.mode == "RGB" and img.size == (8, 8) for img in digits)
    assert len(open_images("digits-test")) == 360
    clutter = open_images("digits-clutter-test")
    assert len(clutter) == 360 and clutter.names[1] == "digits-clutter-test/0001-label6"
    assert all(img.mode == "RGB" and img.size == (24, 24) for img in list(clutter)[:5])


@pytest.mark.parametrize(
    "mode,array",
    [
        ("L", np.full((5, 7), 200, np.uint8)),
        ("I;16", np.full((5, 7), 65535, np.uint16)),
        ("F", np.linspace(-1, 3, 35, dtype=np.float32).reshape(5, 7)),
    ],
)
def test_to_rgb_rescales_non_8bit(mode, array):
    img = Image.fromarray(array)
    assert img.mode == mode
    rgb = np.asarray(to_rgb(img))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8
    if mode == "I;16":
        assert rgb.min() == 255  # full-scale 16-bit is white, not clipped garbage
    if mode == "F":
        assert rgb.min() == 0 and rgb.max() == 255


def test_to_rgb_composites_alpha_on_white_and_handles_palette():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(rgba)).min() == 255
    palette = Image.new("P", (4, 4), 3)
    assert to_rgb(palette).mode == "RGB"


@pytest.fixture
def image_folder(tmp_path):
    """An ImageFolder layout with odd modes and sizes, plus junk files."""
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
    Image.new("RGB", (33, 17), "red").save(tmp_path / "cat" / "a.png")
    Image.new("L", (1, 1), 128).save(tmp_path / "cat" / "b.jpg")
    Image.new("RGBA", (40, 40), (0, 0, 255, 128)).save(tmp_path / "dog" / "c.png")
    Image.new("P", (20, 30)).save(tmp_path / "dog" / "d.gif")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / "cat" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    return tmp_path


def test_folder_recursive_skips_and_counts_junk(image_folder):
    with pytest.warns(UserWarning, match="skipped 2 file"):
        images = open_images(image_folder)
    assert len(images) == 4 and images.skipped == 2
    assert all(img.mode == "RGB" for img in images)
    # round-robin over class folders: the first two images come from different classes
    first_two = {n.split("/")[-2] for n in images.names[:2]}
    assert first_two == {"cat", "dog"}


def test_limit_glob_and_single_file(image_folder):
    assert len(open_images(image_folder, limit=2)) == 2
    assert len(open_images(str(image_folder / "*" / "*.png"))) == 2  # broken.png is rejected
    assert len(open_images(image_folder / "cat" / "a.png")) == 1
    assert len(open_images([image_folder / "cat" / "a.png", image_folder / "dog"])) == 3


def test_image_that_fails_late_is_skipped_during_iteration(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (8, 8)).save(good)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])  # header intact, data cut
    images = open_images(tmp_path)
    with pytest.warns(UserWarning, match="unreadable"):
        loaded = list(images)
    assert len(loaded) + images.skipped == 2 and images.skipped >= 1


def test_a_bundled_set_may_be_written_as_a_folder_unless_that_folder_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open_images("photos/", limit=2).names == open_images("photos", limit=2).names
    assert open_images(["digits-test/", "photos/"], limit=3).names[0].startswith("digits-test")
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 30), "red").save(tmp_path / "photos" / "mine.png")
    assert open_images("photos/").names == [str(Path("photos/mine.png"))]


def test_bundled_sets_mix_with_paths_in_the_order_given(image_folder):
    with pytest.warns(UserWarning, match="skipped 2 file"):
        mixed = open_images(["photos", image_folder, "digits-test"])
    assert len(mixed) == 11 + 4 + 360 and mixed.skipped == 2
    assert mixed.names[0].startswith("photos/") and mixed.names[11].startswith(str(image_folder))
    assert mixed.names[-1].startswith("digits-test/")
    assert "photos, " in mixed.description and all(img.mode == "RGB" for img in mixed)
    with pytest.warns(UserWarning, match="skipped 2 file"):
        limited = open_images([image_folder, "photos"], limit=6)
    assert len(limited) == 6 and limited.names[4:] == ["photos/china", "photos/flower"]
    with pytest.raises(DiagError, match="not found"):
        open_images(["photos", image_folder / "missing"], limit=1)


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


def _grey(image: Image.Image) -> torch.Tensor:
    return _pixels(image).mean(0, keepdim=True)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_stack_every_transform_in_order(image_folder, num_workers):
    with pytest.warns(UserWarning, match="skipped 2 file"):
        images = open_images(image_folder)
    batches = list(images.batches([_pixels, _grey], batch_size=3, num_workers=num_workers))
    assert [tuple(t.shape) for t in batches[0]] == [(3, 3, 8, 8), (3, 1, 8, 8)]
    assert [len(b[0]) for b in batches] == [3, 1]
    expected = torch.stack([_pixels(image) for image in images])
    torch.testing.assert_close(torch.cat([b[0] for b in batches]), expected, rtol=0, atol=0)
    torch.testing.assert_close(torch.cat([b[1] for b in batches]), expected.mean(1, keepdim=True), rtol=0, atol=0)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_skip_and_count_images_that_fail_late(tmp_path, num_workers):
    Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    Image.new("RGB", (8, 8), "blue").save(tmp_path / "c.png")
    truncated = tmp_path / "b.png"
    Image.new("RGB", (64, 64)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])  # header intact, data cut
    images = open_images(tmp_path)
    with pytest.warns(UserWarning, match="skipped unreadable image .*b.png"):
        batches = list(images.batches([_pixels], batch_size=2, num_workers=num_workers))
    assert [len(b[0]) for b in batches] == [1, 1]
    assert images.skipped == 1 and images.skipped_names == [str(truncated)]


def _die_in_a_worker() -> Image.Image:
    if torch.utils.data.get_worker_info() is not None:
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer or a full /dev/shm does
    return Image.new("RGB", (8, 8))


def test_a_worker_that_dies_is_a_diag_error():
    images = ImageSet("doomed", ["a", "b"], [_die_in_a_worker, _die_in_a_worker])
    with pytest.raises(DiagError, match=r"image-loading worker process failed \(DataLoader worker .*--workers 0"):
        list(images.batches([_pixels], batch_size=1, num_workers=1))


def test_image_sets_pickle_for_spawned_workers(image_folder, tiny_model):
    """Workers started with spawn or forkserver (macOS, Python >= 3.14) receive the
    dataset pickled: every kind of set and the model transforms must survive that."""
    from deepvit_diag.preprocessing import model_input_config, model_transform

    model = tiny_model()
    transform = model_transform(model)
    with pytest.warns(UserWarning):
        folder = open_images(image_folder)
    sets = [folder, open_images("digits-test", limit=2), ImageSet.of_images([Image.new("L", (5, 7), 30)])]
    assert all(image.mode == "RGB" for image_set in sets for image in image_set)  # every kind of set hands out RGB
    for image_set in sets:
        dataset = pickle.loads(pickle.dumps(_Transformed(image_set.loaders, (transform,))))
        index, (tensor,), error = dataset[0]
        assert index == 0 and error is None and tensor.shape == model_input_config(model)["input_size"]
        torch.testing.assert_close(tensor, transform(image_set.load(0)))


@pytest.mark.parametrize("bad", ["does/not/exist", "no_match_*.png"])
def test_missing_sources_are_clear_errors(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DiagError):
        open_images(bad)


def test_folder_without_images_is_an_error(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DiagError, match="no usable image"):
        open_images(tmp_path)
    with pytest.raises(DiagError, match="at least 1"):
        open_images("photos", limit=0)


def test_default_image_set_follows_model_cards():
    digits_model = types.SimpleNamespace(provenance={"card": {"image_set": "digits-test"}})
    timm_model = types.SimpleNamespace()
    assert default_image_set([digits_model, digits_model]) == "digits-test"
    assert default_image_set([digits_model, timm_model]) == "photos"
    assert set(BUNDLED_SETS) == {"photos", "digits-test", "digits-clutter-test"}
    clutter_model = types.SimpleNamespace(provenance={"card": {"image_set": "digits-clutter-test"}})
    with pytest.raises(
        DiagError,
        match=r"^the model cards name different image sets \(digits-clutter-test, "
        r"digits-test\): choose the images with --images \(images= in Python\)$",
    ):
        default_image_set([digits_model, timm_model, clutter_model])


# ----------------------------------------------------------------------------- tensors and batches from a notebook


@pytest.fixture
def vit(tiny_model):
    return tiny_model("vit")


def test_dict_batches_give_pixel_values_and_labels(vit, images):
    labels = torch.tensor([1, 3])
    result = analyze(vit, [{"pixel_values": images, "labels": labels}])
    assert result.accuracy.labels == "class indices from the (images, labels) batches"
    assert result == analyze(vit, [(images, labels)])
    with pytest.raises(DiagError, match="a dict batch must hold the images under 'pixel_values'; it holds 'image'"):
        analyze(vit, [{"image": images}])


def test_batches_with_more_entries_take_labels_from_the_second(vit, images):
    labels = torch.tensor([1, 3])
    result = analyze(vit, [(images, labels, torch.arange(2))])
    assert result.accuracy.images == 2
    one_hot = analyze(vit, [(images, torch.eye(2))])
    assert one_hot.accuracy.labels == (
        "the second entry of the batches is a torch.float32 tensor of shape (2, 2), not a (B,) tensor of class indices"
    )


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda x: x[0], r"images of shape \(3, 32, 32\) are one image \(C, H, W\); add the batch dim: x\[None\]"),
        (lambda x: list(x), r"images is a list of 2 \(C, H, W\) tensors; stack them .*torch.stack\(images\)"),
        (lambda x: (x * 60 + 120).clamp(0, 255).to(torch.uint8), r"floating-point tensor, got dtype torch.uint8"),
        (lambda x: x[None], r"must be a \(B, C, H, W\) tensor, got shape \(1, 2, 3, 32, 32\)"),
    ],
)
def test_tensor_shapes_and_dtypes_get_a_hint(vit, images, make, message):
    with pytest.raises(DiagError, match=message):
        analyze(vit, make(images))


def test_unnormalised_float_images_warn(vit, images):
    with pytest.warns(UserWarning, match="they look like 0..255 pixels, not preprocessed input"):
        analyze(vit, (images * 60 + 120).clamp(0, 255))


def test_fewer_than_four_images_warn_that_cka_is_undefined(vit, images):
    with pytest.warns(UserWarning, match="CKA is undefined with 2 images: .* at least 4"):
        result = analyze(vit, images)
    assert np.isnan(result.cka()).all()
