"""Preprocessing: torchvision parity bit for bit, every mode and format, hostile images."""

import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shufflenet.preprocess import (ALLOWED_FORMATS, ImageError, load_image, preprocess_image,
                                   preprocess_pil)
from shufflenet.specs import Preprocess

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_reference(img: Image.Image, resize=256, crop=224) -> np.ndarray:
    """Resize(resize) -> CenterCrop(crop) -> ToTensor -> Normalize, written from torchvision's
    documented semantics for PIL images (functional_pil.resize / center_crop)."""
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = resize, int(resize * long / short)
    size = (new_short, new_long) if w <= h else (new_long, new_short)
    if size != (w, h):
        img = img.resize(size, Image.BILINEAR)
    w, h = img.size
    if crop > w or crop > h:
        pad = [(crop - w) // 2 if crop > w else 0, (crop - h) // 2 if crop > h else 0,
               (crop - w + 1) // 2 if crop > w else 0, (crop - h + 1) // 2 if crop > h else 0]
        canvas = Image.new("RGB", (w + pad[0] + pad[2], h + pad[1] + pad[3]))
        canvas.paste(img, (pad[0], pad[1]))
        img = canvas
        w, h = img.size
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    img = img.crop((left, top, left + crop, top + crop))
    arr = np.asarray(img)
    try:  # ToTensor and Normalize with torch's own float ops when available
        import torch

        t = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)
        t = t.sub(torch.tensor(MEAN).view(3, 1, 1)).div(torch.tensor(STD).view(3, 1, 1))
        return t.numpy()[None]
    except ImportError:
        x = arr.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        return ((x - np.float32(MEAN).reshape(3, 1, 1)) / np.float32(STD).reshape(3, 1, 1))[None]


def torchvision_pil_loader(path) -> Image.Image:
    """torchvision.datasets.folder.pil_loader: open, convert("RGB"); EXIF orientation ignored."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def _rgb(w, h, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


@pytest.mark.parametrize("size", [(500, 375), (375, 500), (256, 256), (224, 224), (257, 300), (301, 257),
                                  (100, 50), (50, 100), (223, 225), (1000, 9), (9, 700), (1, 1), (4032, 3024)])
def test_equals_torchvision_bit_for_bit(size):
    img = _rgb(*size, seed=size[0])
    ours = preprocess_pil(img, Preprocess())
    assert ours.dtype == np.float32 and ours.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(ours, torchvision_reference(img))


@pytest.mark.parametrize("recipe", [Preprocess(resize=224), Preprocess(resize=224, channel_order="BGR", scale=1.0,
                                                                      mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0)),
                                    Preprocess(resize=224, mean=(0.5, 0.25, 0.0), std=(0.3, 0.7, 1.9))])
def test_lookup_normalisation_equals_the_elementwise_form(recipe):
    """The per-channel table must give the very floats ``(x / scale - mean) / std`` gives."""
    img = _rgb(224, 224, seed=3)  # no resize, no crop: only the normalisation differs
    x = np.asarray(img).astype(np.float32) / np.float32(recipe.scale)
    if recipe.channel_order == "BGR":
        x = x[..., ::-1]
    x = (x - np.asarray(recipe.mean, np.float32)) / np.asarray(recipe.std, np.float32)
    assert preprocess_pil(img, recipe).tobytes() == np.ascontiguousarray(x.transpose(2, 0, 1)[None]).tobytes()


def test_resize_232_for_the_large_v2_weights():
    img = _rgb(640, 480)
    np.testing.assert_array_equal(preprocess_image(img, variant="shufflenet_v2_x2_0"),
                                  torchvision_reference(img, resize=232))


def test_square_resize_is_the_zoo_notebook_recipe():
    img = _rgb(640, 480)
    sq = preprocess_image(img, resize="square")
    ref = img.resize((256, 256), Image.BILINEAR).crop((16, 16, 240, 240))
    np.testing.assert_array_equal(sq, torchvision_reference(ref, resize=224))
    with pytest.raises(ImageError, match="resize mode"):
        preprocess_image(img, resize="stretch")


def _encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _modes():
    rgb = _rgb(64, 48)
    p_trans = rgb.convert("P")
    p_trans.info["transparency"] = 0
    i16 = Image.fromarray((np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16))  # I;16
    return {"RGB": rgb, "L": rgb.convert("L"), "1": rgb.convert("1"), "P": rgb.convert("P"),
            "P+transparency": p_trans, "LA": rgb.convert("LA"), "RGBA": rgb.convert("RGBA"),
            "CMYK": rgb.convert("CMYK"), "I;16": i16, "I": rgb.convert("I"), "F": rgb.convert("F"),
            "YCbCr": rgb.convert("YCbCr")}


@pytest.mark.parametrize("mode", list(_modes()))
def test_every_mode_becomes_a_sane_tensor(mode):
    x = preprocess_image(_modes()[mode])
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32 and np.isfinite(x).all()


def _white():
    return preprocess_image(Image.new("RGB", (64, 64), (255, 255, 255)))


def test_transparency_is_composited_on_white():
    clear = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    np.testing.assert_array_equal(preprocess_image(clear), _white())
    la = Image.new("LA", (64, 64), (0, 0))
    np.testing.assert_array_equal(preprocess_image(la), _white())
    p = Image.new("P", (64, 64), 0)
    p.putpalette([0, 0, 0] * 256)
    p.info["transparency"] = 0
    np.testing.assert_array_equal(preprocess_image(_encode(p, "PNG", transparency=0)), _white())


def test_16_bit_is_scaled_not_clamped():
    ramp = np.linspace(0, 65535, 256 * 256).reshape(256, 256).astype(np.uint16)
    rgb = load_image(_encode(Image.fromarray(ramp), "PNG"))
    g = np.asarray(rgb)[..., 0]
    assert g.min() == 0 and g.max() == 255 and 120 < np.median(g) < 136  # a clamp gives 255 almost everywhere


def test_exif_orientation_is_applied_by_photo_decoding_only():
    img = _rgb(300, 200)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    data = _encode(img, "JPEG", exif=exif)
    assert load_image(data).size == (200, 300)
    assert load_image(data, exact=True).size == (300, 200)  # torchvision ignores the tag
    with pytest.raises(ImageError, match="draft_size"):
        load_image(data, exact=True, draft_size=512)


@pytest.mark.parametrize("fmt,mode", [("JPEG", "RGB"), ("JPEG", "L"), ("JPEG", "CMYK"), ("PNG", "RGBA"),
                                      ("PNG", "I;16"), ("PNG", "P"), ("WEBP", "RGB"), ("BMP", "RGB"),
                                      ("GIF", "P"), ("TIFF", "RGB"), ("TIFF", "F")])
def test_allowed_formats_open(fmt, mode):
    img = _modes()[mode] if mode in _modes() else _rgb(64, 48).convert(mode)
    x = preprocess_image(_encode(img, fmt))
    assert x.shape == (1, 3, 224, 224) and np.isfinite(x).all()


@pytest.mark.parametrize("fmt", ["PPM", "ICO", "TGA", "PCX"])
def test_other_formats_are_refused(fmt):
    with pytest.raises(ImageError, match="allowed format"):
        load_image(_encode(_rgb(32, 32), fmt))
    assert fmt not in ALLOWED_FORMATS


def test_gif_first_frame():
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert np.asarray(load_image(buf.getvalue()))[0, 0].tolist() == [255, 0, 0]


def test_decompression_bomb_is_an_error_before_decoding():
    bomb = _encode(Image.new("1", (10_000, 9_000)), "PNG")  # 90 M pixels, ~ 11 kB on disk
    assert len(bomb) < 100_000
    with pytest.raises(ImageError, match="decompression bomb|more than"):
        load_image(bomb)
    with pytest.raises(ImageError, match="more than 1,000 pixels"):
        load_image(_encode(_rgb(40, 40), "PNG"), max_pixels=1000)


def test_truncated_files_raise():
    data = _encode(_rgb(256, 256), "JPEG")
    with pytest.raises(ImageError, match="decode|read"):
        load_image(data[: len(data) // 2])
    png = _encode(_rgb(256, 256), "PNG")
    with pytest.raises(ImageError):
        load_image(png[: len(png) // 2])


def test_not_an_image_and_missing_file(tmp_path):
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(ImageError, match="x.jpg"):
        preprocess_image(tmp_path / "x.jpg")
    with pytest.raises(ImageError, match="no such file"):
        preprocess_image(tmp_path / "nope.jpg")


def test_draft_mode_stays_close_and_exact_mode_is_exact():
    img = _rgb(64, 48).resize((2400, 1800), Image.BICUBIC)
    data = _encode(img, "JPEG", quality=95)
    exact = preprocess_image(data, exact=True)
    draft = preprocess_image(data)
    np.testing.assert_array_equal(exact, torchvision_reference(Image.open(io.BytesIO(data)).convert("RGB")))
    diff = np.abs(exact - draft) * np.float32(STD).reshape(1, 3, 1, 1) * 255
    assert diff.mean() < 1.0 and diff.max() < 12  # 8-bit pixel units; see docs/preprocessing.md


MODES = ["RGB", "L", "1", "P", "LA", "RGBA", "CMYK", "I;16", "I", "F"]


@settings(max_examples=40, deadline=None)
@given(mode=st.sampled_from(MODES), w=st.integers(1, 400), h=st.integers(1, 400),
       orientation=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_any_mode_size_orientation(mode, w, h, orientation, seed):
    base = _rgb(w, h, seed)
    img = Image.fromarray(np.asarray(base.convert("L")).astype(np.uint16) * 257) if mode == "I;16" else base.convert(mode)
    exif = Image.Exif()
    exif[0x0112] = orientation
    fmt = "TIFF" if mode in ("I;16", "I", "F", "CMYK") else "PNG"
    data = _encode(img, fmt, exif=exif) if fmt == "PNG" else _encode(img, fmt)
    a, b = preprocess_image(data), preprocess_image(data)
    assert a.shape == (1, 3, 224, 224) and a.dtype == np.float32 and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)


def _photo_folder(root):
    """An ImageFolder of JPEGs that trip every shortcut: large (draft decoding would apply),
    EXIF-rotated, grayscale, CMYK and a PNG with transparency."""
    folder = root / "n01440764"
    folder.mkdir(parents=True)
    smooth = _rgb(40, 30, seed=7).resize((2400, 1800), Image.BICUBIC)
    smooth.save(folder / "large_landscape.jpg", quality=92)
    smooth.transpose(Image.Transpose.ROTATE_90).resize((1100, 1500)).save(folder / "large_portrait.jpg", quality=85)
    exif = Image.Exif()
    exif[0x0112] = 6
    _rgb(36, 24, seed=8).resize((1200, 800), Image.BICUBIC).save(folder / "exif_rotated.jpg", exif=exif)
    _rgb(500, 375, seed=9).convert("L").save(folder / "gray.jpg")
    _rgb(600, 400, seed=10).convert("CMYK").save(folder / "cmyk.jpg")
    rgba = _rgb(300, 260, seed=11).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "alpha.png")
    return sorted(folder.iterdir())


def test_evaluate_feeds_the_model_torchvisions_tensors_bit_for_bit(tmp_path, monkeypatch):
    """evaluate's default path is torchvision's eval transform: no draft decoding, no EXIF
    transpose, pil_loader's convert("RGB"), on exactly the inputs the model receives."""
    from shufflenet import evaluate as evaluate_module
    from shufflenet.runtime import Classifier

    files = _photo_folder(tmp_path / "data")
    fed = []
    original = Classifier.outputs

    def spy(self, batch):
        fed.append(batch.copy())
        return original(self, batch)

    monkeypatch.setattr(Classifier, "outputs", spy)
    report = evaluate_module.evaluate("shufflenet_v2_x0_5:random:0", tmp_path / "data", batch_size=64, threads=1)
    assert report.images == len(files) and "exact decoding" in report.preprocessing
    ours = np.concatenate(fed)
    reference = np.concatenate([torchvision_reference(torchvision_pil_loader(f)) for f in files])
    assert ours.tobytes() == reference.tobytes()
    # photo decoding differs on exactly these files: proof that the test can fail
    fed.clear()
    photo = evaluate_module.evaluate("shufflenet_v2_x0_5:random:0", tmp_path / "data", batch_size=64,
                                     threads=1, exact=False)
    assert "photo decoding" in photo.preprocessing
    differs = {f.name for f, a, b in zip(files, np.concatenate(fed), reference) if a.tobytes() != b.tobytes()}
    assert {"large_landscape.jpg", "large_portrait.jpg", "exif_rotated.jpg", "alpha.png"} <= differs
