"""Tests for poissonvae.data: checked against independent computations."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from poissonvae.data import (
    SHIPPED_IMAGES,
    DataConfig,
    DataError,
    PatchSet,
    load_images,
    load_patch_file,
    local_contrast_normalize,
    prepare_patches,
    validate_patches,
    whiten,
)
from poissonvae.data import patches as patches_mod
from poissonvae.data.images import load_folder
from poissonvae.data.patches import sample_patches, split_images
from poissonvae.data.preprocess import gaussian_kernel, preprocess_image

F0, N_EXP = 0.5, 4.0


# ---------------------------------------------------------------- helpers
def _freq_grid(h: int, w: int) -> np.ndarray:
    """Radial frequency of the unshifted FFT layout, built without fftfreq."""

    def axis(n: int) -> np.ndarray:
        k = np.arange(n)
        return np.where(k <= (n - 1) // 2, k, k - n) / n

    return np.hypot(axis(h)[:, None], axis(w)[None, :])


def _r(f: np.ndarray) -> np.ndarray:
    return f * np.exp(-((f / F0) ** N_EXP))


def _radial_power(power: np.ndarray, f: np.ndarray, centres, width: float) -> np.ndarray:
    return np.array([power[np.abs(f - c) < width / 2].mean() for c in centres])


def _buggy_whiten(img: np.ndarray) -> np.ndarray:
    """The reference code's bug: centred (fftshift) grid on the unshifted FFT."""
    h, w = img.shape
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :]
    spec = np.fft.fft2(img - img.mean()) * _r(np.hypot(fx, fy))
    return np.fft.ifft2(spec).real


def _save_png(path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path)


def _smooth_noise(rng: np.random.Generator, shape, sigma: float = 2.0) -> np.ndarray:
    x = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    x = (x - x.min()) / (x.max() - x.min())
    return (x * 255).astype(np.uint8)


# ---------------------------------------------------------------- whitening
def test_whiten_white_noise_spectrum_follows_r_squared():
    rng = np.random.default_rng(0)
    n, trials = 128, 24
    p_in = np.zeros((n, n))
    p_out = np.zeros((n, n))
    for _ in range(trials):
        x = rng.standard_normal((n, n))
        p_in += np.abs(np.fft.fft2(x - x.mean())) ** 2
        p_out += np.abs(np.fft.fft2(whiten(x, F0, N_EXP))) ** 2
    f = _freq_grid(n, n)
    centres = [0.05, 0.1, 0.2, 0.3, 0.4, 0.48]
    width = 0.02
    ratio = _radial_power(p_out, f, centres, width) / _radial_power(p_in, f, centres, width)
    expected = np.array([(_r(f[np.abs(f - c) < width / 2]) ** 2).mean() for c in centres])
    np.testing.assert_allclose(ratio, expected, rtol=0.1)
    # shape sanity: R^2 rises then rolls off above ~0.35 cycles/pixel
    assert ratio[2] > ratio[0] and ratio[-1] < ratio[3]


def test_whiten_flattens_one_over_f_image():
    rng = np.random.default_rng(1)
    n = 256
    f = _freq_grid(n, n)
    amp = np.zeros_like(f)
    amp[f > 0] = 1.0 / f[f > 0]
    centres = np.linspace(0.04, 0.22, 7)
    p_in = np.zeros((n, n))
    p_out = np.zeros((n, n))
    for _ in range(4):
        img = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * amp).real
        p_in += np.abs(np.fft.fft2(img)) ** 2
        p_out += np.abs(np.fft.fft2(whiten(img, F0, N_EXP))) ** 2
    rp_in = _radial_power(p_in, f, centres, 0.02)
    rp_out = _radial_power(p_out, f, centres, 0.02)
    slope_in = np.polyfit(np.log(centres), np.log(rp_in), 1)[0]
    slope_out = np.polyfit(np.log(centres), np.log(rp_out), 1)[0]
    assert slope_in < -1.7  # the input really is ~1/f^2 in power
    assert abs(slope_out) < 0.3
    assert rp_out.max() / rp_out.min() < 1.5


def test_whiten_zero_dc_and_offset_invariance():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((40, 50))
    out = whiten(x)
    assert out.dtype == np.float64 and out.shape == x.shape
    assert abs(out.mean()) < 1e-12  # R(0) = 0
    np.testing.assert_allclose(whiten(x + 7.0), out, atol=1e-12)
    # filter value at DC, independently: response to a constant image is 0
    np.testing.assert_allclose(whiten(np.ones((9, 9)) * 3.0), 0.0, atol=1e-12)


@pytest.mark.parametrize("shape", [(63, 65), (64, 64), (31, 48)])
def test_whiten_preserves_mirror_symmetry(shape):
    rng = np.random.default_rng(3)
    base = rng.standard_normal(shape)
    sym = base + base[:, ::-1] + base[::-1, :] + base[::-1, ::-1]
    out = whiten(sym)
    np.testing.assert_allclose(out, out[:, ::-1], atol=1e-10)
    np.testing.assert_allclose(out, out[::-1, :], atol=1e-10)
    # the real part of an ifft of a Hermitian spectrum equals the full result
    full = np.fft.ifft2(np.fft.fft2(sym - sym.mean()) * _r(_freq_grid(*shape)))
    assert np.abs(full.imag).max() < 1e-10
    np.testing.assert_allclose(out, full.real, atol=1e-10)
    if shape[0] % 2 and shape[1] % 2:  # the shifted-grid bug breaks symmetry here
        bad = _buggy_whiten(sym)
        assert np.abs(bad - bad[:, ::-1]).max() > 1e-3


# ---------------------------------------------------------------- kernel / LCN
@pytest.mark.parametrize("size,sigma", [(13, 0.5), (7, 2.0), (3, 0.1)])
def test_gaussian_kernel(size, sigma):
    k = gaussian_kernel(size, sigma)
    assert k.shape == (size, size)
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(k, k.T)
    np.testing.assert_allclose(k, k[::-1, :])
    np.testing.assert_allclose(k, k[:, ::-1])
    total = 0.0
    for i in range(size):
        for j in range(size):
            xi = -1.0 + 2.0 * i / (size - 1)
            xj = -1.0 + 2.0 * j / (size - 1)
            total += np.exp(-(xi * xi + xj * xj) / sigma)
    c = size // 2
    assert k[c, c] == pytest.approx(np.exp(0.0) / total, rel=1e-12)
    assert k[c, c] == k.max()


def _lcn_reference(img: np.ndarray, size: int = 13, sigma: float = 0.5) -> np.ndarray:
    x = np.linspace(-1, 1, size)
    k = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / sigma)
    k /= k.sum()
    v = img - ndimage.convolve(img, k, mode="reflect")
    s = np.sqrt(ndimage.convolve(v**2, k, mode="reflect"))
    return v / np.maximum(s, s.mean())


def _bright_patch_image() -> np.ndarray:
    rng = np.random.default_rng(4)
    img = 0.3 + 0.01 * rng.standard_normal((96, 96))
    img[30:70, 30:70] += 0.4 + 0.2 * rng.standard_normal((40, 40))
    return img


def test_lcn_matches_direct_2d_computation():
    img = _bright_patch_image()
    np.testing.assert_allclose(local_contrast_normalize(img), _lcn_reference(img), atol=1e-10)
    np.testing.assert_allclose(
        local_contrast_normalize(img, 7, 2.0), _lcn_reference(img, 7, 2.0), atol=1e-10
    )


def test_lcn_local_statistics_and_contrast_invariance():
    img = _bright_patch_image()
    out = local_contrast_normalize(img)
    box_mean = ndimage.uniform_filter(out, 9, mode="reflect")
    box_std = np.sqrt(ndimage.uniform_filter(out**2, 9, mode="reflect") - box_mean**2)
    inner = (slice(40, 60), slice(40, 60))  # well inside the high-contrast square
    assert np.abs(box_mean[inner]).mean() < 0.15
    assert box_std[inner].max() < 1.3
    assert box_std[inner].mean() == pytest.approx(1.0, abs=0.25)
    # the flat background is not amplified to unit contrast
    assert out[:15, :15].std() < 0.3
    np.testing.assert_allclose(local_contrast_normalize(10.0 * img), out, atol=1e-10)
    np.testing.assert_allclose(local_contrast_normalize(img + 5.0), out, atol=1e-9)


# ---------------------------------------------------------------- split / sampling
def test_split_images():
    names = [f"img{i:02d}" for i in range(10)]
    tr, va = split_images(names, 0.2, seed=0)
    assert set(tr).isdisjoint(va) and set(tr) | set(va) == set(names)
    assert len(va) == 2 and len(tr) == 8
    assert split_images(list(reversed(names)), 0.2, seed=0) == (tr, va)
    assert any(split_images(names, 0.2, seed=s)[1] != va for s in range(1, 10))
    assert len(split_images(names, 0.01, 0)[1]) == 1
    assert len(split_images(names, 0.99, 0)[0]) == 1
    tr2, va2 = split_images(["a", "b"], 0.5, 3)
    assert len(tr2) == 1 and len(va2) == 1
    with pytest.raises(DataError, match="at least 2 images"):
        split_images(["only"], 0.2, 0)


def test_sample_patches_are_true_windows_and_area_weighted():
    p = 4
    small = np.arange(5 * 6, dtype=float).reshape(5, 6)  # 2*3 = 6 positions
    big = 1000.0 + np.arange(13 * 11, dtype=float).reshape(13, 11)  # 10*8 = 80
    out = sample_patches([small, big], 4000, p, np.random.default_rng(0))
    assert out.shape == (4000, p * p) and out.dtype == np.float32
    from_big = out[:, 0] >= 1000
    assert from_big.mean() == pytest.approx(80 / 86, abs=0.02)
    for row in out[:50]:
        img = big if row[0] >= 1000 else small
        r, c = np.argwhere(img == row[0])[0]
        np.testing.assert_array_equal(row.reshape(p, p), img[r : r + p, c : c + p])
    with pytest.raises(DataError, match="tiny.*smaller than the patch size"):
        sample_patches([small, np.ones((3, 9))], 10, p, np.random.default_rng(0), ["a", "tiny"])


# ---------------------------------------------------------------- prepare (shipped)
@pytest.fixture(scope="module")
def shipped_cfg(tmp_path_factory) -> DataConfig:
    return DataConfig(n_train=2000, n_val=500, cache_dir=str(tmp_path_factory.mktemp("cache")))


def _find_window(img: np.ndarray, patch: np.ndarray, tol: float) -> bool:
    p = int(np.sqrt(patch.size))
    win = np.lib.stride_tricks.sliding_window_view(img, (p, p))
    cand = np.argwhere(np.abs(win[:, :, 0, 0] - patch[0]) < tol)
    return any(np.abs(win[r, c].ravel() - patch).max() < tol for r, c in cand)


def test_prepare_patches_shipped(shipped_cfg):
    ps = prepare_patches(shipped_cfg)
    assert isinstance(ps, PatchSet)
    assert ps.train.shape == (2000, 256) and ps.val.shape == (500, 256)
    assert ps.train.dtype == np.float32 and ps.val.dtype == np.float32
    assert abs(float(ps.train.mean())) < 1e-3
    assert float(ps.train.std()) == pytest.approx(1.0, abs=1e-3)
    assert np.isfinite(ps.val).all() and abs(float(ps.val.mean())) < 0.3
    assert set(ps.train_images).isdisjoint(ps.val_images)
    assert set(ps.train_images) | set(ps.val_images) <= set(SHIPPED_IMAGES)
    assert len(ps.train_images) + len(ps.val_images) >= 2
    # provenance: undo the z-score and find the patches in their own split only
    images = dict(load_images("shipped"))
    prep = {k: preprocess_image(images[k], shipped_cfg) for k in images}
    for patch, own, other in ((ps.train[0], ps.train_images, ps.val_images),
                              (ps.val[0], ps.val_images, ps.train_images)):
        raw = patch.astype(np.float64) * ps.std + ps.mean
        assert any(_find_window(prep[k], raw, 1e-4) for k in own)
        assert not any(_find_window(prep[k], raw, 1e-4) for k in other)
    tr, va = ps.tensors()
    assert tr.dtype == torch.float32 and tuple(va.shape) == (500, 256)


def test_prepare_patches_cache_hit_and_corrupt_cache(shipped_cfg, monkeypatch):
    first = prepare_patches(shipped_cfg)
    files = [f for f in os.listdir(shipped_cfg.cache_dir) if f.endswith(".npz")]
    assert files == [f"patches-{shipped_cfg.cache_key()}.npz"]
    path = os.path.join(shipped_cfg.cache_dir, files[0])
    mtime = os.stat(path).st_mtime_ns

    def boom(source):
        raise AssertionError("images must not be loaded on a cache hit")

    monkeypatch.setattr(patches_mod, "load_images", boom)
    second = prepare_patches(shipped_cfg)
    np.testing.assert_array_equal(second.train, first.train)
    np.testing.assert_array_equal(second.val, first.val)
    assert (second.mean, second.std) == (first.mean, first.std)
    assert (second.train_images, second.val_images) == (first.train_images, first.val_images)
    assert os.stat(path).st_mtime_ns == mtime
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["config"]))["n_train"] == 2000
    monkeypatch.undo()

    with open(path, "wb") as fh:  # corrupt the cache: it must be rebuilt
        fh.write(b"not a zip file at all")
    third = prepare_patches(shipped_cfg)
    np.testing.assert_array_equal(third.train, first.train)
    with np.load(path, allow_pickle=False) as z:
        np.testing.assert_array_equal(z["val"], first.val)


def test_cache_key_depends_on_inputs_not_cache_dir(tmp_path):
    a = DataConfig()
    assert a.cache_key() == DataConfig(cache_dir=str(tmp_path)).cache_key()
    assert a.cache_key() != DataConfig(seed=1).cache_key()
    assert a.cache_key() != DataConfig(whiten_f0=0.4).cache_key()
    _save_png(tmp_path / "a.png", _smooth_noise(np.random.default_rng(0), (32, 32)))
    k1 = DataConfig(source=str(tmp_path)).cache_key()
    _save_png(tmp_path / "b.png", _smooth_noise(np.random.default_rng(1), (32, 32)))
    assert DataConfig(source=str(tmp_path)).cache_key() != k1


# ---------------------------------------------------------------- folder source
def test_folder_source_with_png_and_iml(tmp_path):
    rng = np.random.default_rng(5)
    _save_png(tmp_path / "a_gray.png", _smooth_noise(rng, (64, 64)))
    rgb = np.stack([_smooth_noise(rng, (64, 80)) for _ in range(3)], axis=-1)
    _save_png(tmp_path / "b_rgb.PNG", rgb)
    rgba = np.concatenate([rgb, np.full((64, 80, 1), 255, np.uint8)], axis=-1)
    _save_png(tmp_path / "c_rgba.png", rgba)
    rows, cols = np.mgrid[0:1024, 0:1536]
    grad = rows * 40 + cols  # max 42455 fits uint16; encodes (row, col)
    grad.astype(">u2").tofile(tmp_path / "d_vanhateren.iml")
    (tmp_path / "notes.txt").write_text("ignored")

    loaded = load_folder(tmp_path)
    assert [n for n, _ in loaded] == ["a_gray.png", "b_rgb.PNG", "c_rgba.png", "d_vanhateren.iml"]
    assert all(im.ndim == 2 and im.dtype == np.float64 for _, im in loaded)
    iml = loaded[3][1]
    assert iml.shape == (1024, 1536)
    np.testing.assert_array_equal(iml, grad.astype(np.float64))
    assert iml[1, 0] == 40 and iml[0, 1] == 1
    np.testing.assert_allclose(loaded[0][1], _smooth_noise(np.random.default_rng(5), (64, 64)) / 255)

    cfg = DataConfig(source=str(tmp_path), n_train=500, n_val=200, val_fraction=0.25,
                     cache_dir=str(tmp_path / "cache"))
    ps = prepare_patches(cfg)
    assert ps.train.shape == (500, 256) and ps.val.shape == (200, 256)
    assert len(ps.val_images) == 1 and len(ps.train_images) == 3
    assert abs(float(ps.train.mean())) < 1e-3


# ---------------------------------------------------------------- errors
def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_images(str(tmp_path / "nope"))
    with pytest.raises(DataError, match="does not exist"):
        prepare_patches(DataConfig(source=str(tmp_path / "nope"), cache_dir=str(tmp_path)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no supported images.*\.png"):
        load_images(str(empty))
    (empty / "readme.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no supported images.*\.iml"):
        load_images(str(empty))


@pytest.mark.parametrize(
    "fname,payload,pattern",
    [
        ("bad.png", b"\x89PNG garbage" + bytes(range(256)), r"cannot read image file.*bad\.png"),
        ("bad.jpg", bytes(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8)),
         r"cannot read image file.*bad\.jpg"),
        ("short.iml", b"\x00\x01" * 1000, r"short\.iml.*2000 bytes, expected 3145728"),
    ],
)
def test_unreadable_files(tmp_path, fname, payload, pattern):
    (tmp_path / fname).write_bytes(payload)
    with pytest.raises(DataError, match=pattern):
        load_images(str(tmp_path))


def test_bad_image_content(tmp_path):
    import tifffile

    nan_img = np.random.default_rng(0).random((20, 20))
    nan_img[3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", nan_img)
    with pytest.raises(DataError, match=r"nan\.tif.*1 NaN/Inf"):
        load_images(str(tmp_path))
    os.remove(tmp_path / "nan.tif")
    _save_png(tmp_path / "flat.png", np.full((20, 20), 7, np.uint8))
    with pytest.raises(DataError, match=r"flat\.png.*constant"):
        load_images(str(tmp_path))


def test_image_smaller_than_patch(tmp_path):
    rng = np.random.default_rng(6)
    _save_png(tmp_path / "big.png", _smooth_noise(rng, (64, 64)))
    _save_png(tmp_path / "small.png", _smooth_noise(rng, (8, 30)))
    cfg = DataConfig(source=str(tmp_path), n_train=10, n_val=10, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataError, match=r"small\.png is 8x30, smaller than the patch size 16x16"):
        prepare_patches(cfg)


def test_validate_patches_errors():
    good = np.zeros((5, 256), np.float32)
    validate_patches(good, 16)
    validate_patches(torch.zeros(3, 64), 8)
    bad = good.copy()
    bad[0, :3] = np.nan
    with pytest.raises(DataError, match="3 non-finite"):
        validate_patches(bad, 16)
    with pytest.raises(DataError, match="2 non-finite"):
        validate_patches(torch.tensor([[float("inf"), float("nan"), 0.0, 1.0]]), 2)
    with pytest.raises(DataError, match=r"expected patches of 16x16 = 256 values, got 100"):
        validate_patches(np.zeros((4, 100)), 16)
    with pytest.raises(DataError, match="empty"):
        validate_patches(np.zeros((0, 256)), 16)
    with pytest.raises(DataError, match="2-D"):
        validate_patches(np.zeros((4, 16, 16)), 16)


def test_load_patch_file(tmp_path):
    arr = np.random.default_rng(0).standard_normal((7, 64))
    np.save(tmp_path / "ok.npy", arr)
    out = load_patch_file(tmp_path / "ok.npy", patch_size=8)
    assert out.dtype == np.float32 and out.shape == (7, 64)
    np.testing.assert_allclose(out, arr, rtol=1e-6)
    with pytest.raises(DataError, match="got 64"):
        load_patch_file(tmp_path / "ok.npy", patch_size=16)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"cannot load patch file.*obj\.npy"):
        load_patch_file(tmp_path / "obj.npy")


# ---------------------------------------------------------------- config
@pytest.mark.parametrize(
    "field,value",
    [
        ("patch_size", 1), ("n_train", 0), ("n_val", -5), ("val_fraction", 0.0),
        ("val_fraction", 1.0), ("whiten_f0", 0.0), ("whiten_n", -1.0), ("lcn_sigma", 0.0),
        ("lcn_size", 0), ("lcn_size", 12), ("whiten_f0", float("nan")),
    ],
)
def test_config_validation(field, value, monkeypatch):
    cfg = DataConfig(**{field: value})
    with pytest.raises(ValueError, match=field):
        cfg.validate()

    def boom(source):
        raise AssertionError("config must be validated before loading images")

    monkeypatch.setattr(patches_mod, "load_images", boom)
    with pytest.raises(ValueError, match=field):
        prepare_patches(cfg)


def test_config_roundtrip_and_unknown_keys():
    cfg = DataConfig(seed=3, n_train=10)
    assert DataConfig.from_dict(cfg.to_dict()) == cfg
    assert DataConfig.from_dict({"seed": 4}).seed == 4
    with pytest.raises(ValueError, match="unknown DataConfig field.*patchsize"):
        DataConfig.from_dict({"patchsize": 16})
    DataConfig().validate()
