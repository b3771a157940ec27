"""28x28 digits: scikit-learn's shipped digits, the MNIST IDX reader, splits and the cache."""

import gzip
import struct

import numpy as np
import pytest

from poissonvae.config import ConfigError, ModelConfig, RunConfig
from poissonvae.data import DataConfig, DataError, prepare_patches
from poissonvae.data.cache import cache_path
from poissonvae.data.digits import load_sklearn_digits, read_idx, split_samples, upsample_digits


def _write_idx(path, array, code=0x08):
    """An IDX file written independently of the reader: magic, big-endian sizes, data."""
    array = np.asarray(array)
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[code]
    blob = header + array.astype(dtype).tobytes()
    if str(path).endswith(".gz"):
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def _digits_cfg(tmp_path, **kw):
    base = dict(source="digits", patch_size=28, n_train=100_000, n_val=100_000, cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return DataConfig(**base)


def test_shipped_digits_are_28x28_in_the_unit_interval():
    digits = load_sklearn_digits()
    assert digits.shape == (1797, 28, 28) and digits.dtype == np.float32
    assert digits.min() == 0.0 and digits.max() == pytest.approx(1.0)
    # bilinear upsampling of a constant image is that constant, scaled by 1/16
    assert np.allclose(upsample_digits(np.full((1, 8, 8), 8.0)), 0.5)


def test_digit_patch_set_split_by_sample_is_deterministic_and_cached(tmp_path):
    cfg = _digits_cfg(tmp_path)
    ps = prepare_patches(cfg)
    assert ps.train.shape[1] == ps.val.shape[1] == 784
    assert len(ps.train) + len(ps.val) == 1797 and len(ps.val) == round(0.2 * 1797)
    assert ps.train.min() >= 0 and ps.train.max() <= 1 and (ps.mean, ps.std) == (0.0, 1.0)  # not z-scored
    assert cache_path(cfg).is_file()
    again = prepare_patches(cfg)  # from the cache
    assert np.array_equal(again.train, ps.train) and np.array_equal(again.val, ps.val)
    capped = prepare_patches(_digits_cfg(tmp_path, n_train=100, n_val=50))
    assert capped.train.shape == (100, 784) and capped.val.shape == (50, 784)
    assert np.array_equal(capped.train, ps.train[:100])
    other = prepare_patches(_digits_cfg(tmp_path, seed=1))
    assert not np.array_equal(other.val, ps.val)
    # the split: disjoint, covers every sample, the same for the same seed
    tr, va = split_samples(1797, 0.2, seed=3)
    assert not set(tr) & set(va) and len(set(tr) | set(va)) == 1797
    tr2, va2 = split_samples(1797, 0.2, seed=3)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)


def test_idx_reader_reads_what_was_written(tmp_path):
    images = _images(5, 0)
    _write_idx(tmp_path / "a-idx3-ubyte", images)
    _write_idx(tmp_path / "a-idx3-ubyte.gz", images)
    ints = np.arange(-3, 9).reshape(3, 4)
    _write_idx(tmp_path / "b-idx2-int", ints, code=0x0C)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), images)
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), images)
    assert np.array_equal(read_idx(tmp_path / "b-idx2-int"), ints)


def test_corrupt_idx_files_raise_clear_errors(tmp_path):
    good = tmp_path / "good"
    _write_idx(good, _images(3, 0))
    blob = good.read_bytes()
    cases = {
        "magic": b"\x01\x02" + blob[2:],  # not two zero bytes
        "type": blob[:2] + b"\x07" + blob[3:],  # unknown data-type code
        "truncated": blob[:-10],  # fewer bytes than the header promises
        "header": blob[:6],  # cut inside the sizes
        "short": blob[:2],
    }
    messages = {"magic": "magic", "type": "magic", "truncated": "truncated or corrupt", "header": "header",
                "short": "too short"}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=messages[name]):
            read_idx(tmp_path / name)
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="gzip"):
        read_idx(tmp_path / "bad.gz")


def test_mnist_folder_source_uses_its_own_split(tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    train, test = _images(7, 1), _images(4, 2)
    _write_idx(folder / "train-images-idx3-ubyte.gz", train)
    _write_idx(folder / "t10k-images-idx3-ubyte", test)
    cfg = DataConfig(source=f"mnist:{folder}", patch_size=28, n_train=5, n_val=100, cache_dir=str(tmp_path / "c"))
    ps = prepare_patches(cfg)
    assert ps.train.shape == (5, 784) and ps.val.shape == (4, 784)
    flat = train.reshape(7, -1).astype(np.float32) / 255
    assert all(any(np.array_equal(row, t) for t in flat) for row in ps.train)  # [0, 1] pixels, from the train file
    assert sorted(map(tuple, ps.val)) == sorted(map(tuple, test.reshape(4, -1).astype(np.float32) / 255))
    again = prepare_patches(cfg)
    assert np.array_equal(again.train, ps.train)
    # without a t10k file the training file is split by sample
    (folder / "t10k-images-idx3-ubyte").unlink()
    split = prepare_patches(DataConfig(**{**cfg.to_dict(), "val_fraction": 0.3}))
    assert len(split.val) == 2 and len(split.train) == 5
    # a corrupt file is a clear error
    (folder / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 5))
    with pytest.raises(DataError, match="train-images"):
        prepare_patches(DataConfig(**{**cfg.to_dict(), "seed": 9}))


def test_digit_sources_are_validated_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="patch_size.*28"):
        prepare_patches(_digits_cfg(tmp_path, patch_size=16))
    with pytest.raises(ValueError, match="mnist"):
        DataConfig(source="mnist:", patch_size=28).validate()
    with pytest.raises(DataError, match="does not exist"):
        prepare_patches(DataConfig(source=f"mnist:{tmp_path / 'nowhere'}", patch_size=28,
                                   cache_dir=str(tmp_path / "c")))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        prepare_patches(DataConfig(source=f"mnist:{empty}", patch_size=28, cache_dir=str(tmp_path / "c")))
    assert not (tmp_path / "c").exists()
    # a run on digits: the model input follows the 28x28 images
    cfg = RunConfig(data=_digits_cfg(tmp_path), model=ModelConfig(arch="conv|lin", input_dim=784))
    cfg.validate()
    cfg.model.input_dim = 256
    with pytest.raises(ConfigError, match="patch_size"):
        cfg.validate()
