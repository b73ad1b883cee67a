import numpy as np
import pytest
import torch
from PIL import Image

from multibox.data import EvalTransform, ImageDecodeError, load_image
from multibox.demo import default_photo
from multibox.models.spec import InputSpec


def test_load_real_photo_is_rgb_uint8():
    img = load_image(default_photo())
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert img.shape[:2] == (600, 512)  # grace_hopper.jpg is 512 wide, 600 high


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:, :10] = 255  # white band on the left
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.shape[:2] == (40, 20)  # upright as a viewer shows it
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # left band is now on top


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_modes_become_rgb(tmp_path, mode):
    base = Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8))
    img = base.convert("L").convert("I;16") if mode == "I;16" else base.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    img.save(path)
    out = load_image(path)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8


def test_bad_files_name_the_path(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    for p, msg in [(empty, "empty"), (junk, "cannot decode"), (tmp_path / "missing.jpg", "no such")]:
        with pytest.raises(ImageDecodeError, match=msg) as e:
            load_image(p)
        assert str(p) in str(e.value)


def test_eval_transform_resizes_and_normalizes():
    spec = InputSpec(image_size=(30, 40), mean=(10.0, 20.0, 30.0), std=(2.0, 2.0, 2.0))
    img = np.full((15, 20, 3), 50, dtype=np.uint8)
    x, sizes = EvalTransform(spec)([img, img[:10]])
    assert x.shape == (2, 3, 30, 40) and x.dtype == torch.float32
    assert sizes == [(15, 20), (10, 20)]
    torch.testing.assert_close(x[0, :, 5, 5], torch.tensor([20.0, 15.0, 10.0]))
