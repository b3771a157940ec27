"""Tests of the command-line interface (``poissonvae data`` / ``poissonvae train``)."""

from __future__ import annotations

import json

import pytest

from poissonvae import training
from poissonvae.cli import main
from poissonvae.config import RunConfig

RUN_FILES = ("config.json", "weights.safetensors", "metrics.json", "dictionary.png", "log.jsonl")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One patch cache for the whole module: the shipped images are preprocessed once."""
    return tmp_path_factory.mktemp("cache")


def tiny(cache_dir, out, *extra):
    data = ["--n-train", "2000", "--n-val", "500", "--cache-dir", str(cache_dir)]
    return ["train", "--K", "16", "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "500",
            *data, "--out", str(out), "--no-progress", *extra]


def assert_error(capsys, argv, *words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("poissonvae: error: ")
    assert "Traceback" not in err
    for word in words:
        assert word in err, (word, err)
    return err


# ------------------------------------------------------------------ help
@pytest.mark.parametrize("argv", [["--help"], ["data", "--help"], ["train", "--help"]])
def test_help(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out
    assert "poissonvae " in out


def test_train_help_shows_paper_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default: 512)" in out and "(default: 3000)" in out
    assert "gaussian_relu" in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


# ------------------------------------------------------------------ data
def test_data_prints_summary_and_exports(capsys, cache_dir, tmp_path):
    export = tmp_path / "sub" / "patches.npz"
    argv = ["data", "--n-train", "2000", "--n-val", "500", "--cache-dir", str(cache_dir), "--export", str(export)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(2000, 256)" in out and "(500, 256)" in out
    assert "z-score" in out and str(cache_dir) in out
    assert export.is_file()

    import numpy as np

    with np.load(export) as z:
        assert z["train"].shape == (2000, 256) and z["val"].shape == (500, 256)
        assert not set(z["train_images"]) & set(z["val_images"])


def test_data_rejects_invalid_settings(capsys, tmp_path):
    assert_error(capsys, ["data", "--n-train", "0", "--cache-dir", str(tmp_path / "c")], "n_train")
    assert not (tmp_path / "c").exists()


# ------------------------------------------------------------------ train
def test_train_writes_run_and_does_not_retrain(capsys, cache_dir, tmp_path):
    out = tmp_path / "run"
    assert main(tiny(cache_dir, out)) == 0
    text = capsys.readouterr().out
    for key in ("mse", "r2", "metabolic_cost", "proportion_zeros", "lifetime_sparsity", "neg_elbo", "kl"):
        assert key in text
    assert str(out) in text
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.safetensors").exists()
    cfg = RunConfig.load(out / "config.json")
    assert (cfg.model.K, cfg.train.epochs, cfg.data.n_train) == (16, 2, 2000)
    assert cfg.model.family == "poisson" and cfg.train.beta == 1.0  # dataclass defaults

    mtime = (out / "metrics.json").stat().st_mtime_ns
    assert main(tiny(cache_dir, out)) == 0
    assert (out / "metrics.json").stat().st_mtime_ns == mtime
    assert "mse" in capsys.readouterr().out

    # a finished run can also be "resumed": it just reports its metrics
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert (out / "metrics.json").stat().st_mtime_ns == mtime

    # a different config into the same directory is refused, and nothing changes
    before = (out / "config.json").read_text()
    assert_error(capsys, tiny(cache_dir, out, "--beta", "2.0"), "different config", str(out))
    assert (out / "config.json").read_text() == before


def test_resume_continues_an_interrupted_run(capsys, cache_dir, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_epoch = training.Trainer.train_epoch

    def interrupt_in_epoch_two(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return real_epoch(self)

    monkeypatch.setattr(training.Trainer, "train_epoch", interrupt_in_epoch_two)
    assert main(tiny(cache_dir, out, "--checkpoint-every", "1")) == 130
    assert "--resume" in capsys.readouterr().err
    assert (out / "checkpoint.safetensors").is_file() and not (out / "metrics.json").exists()

    monkeypatch.setattr(training.Trainer, "train_epoch", real_epoch)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    for name in RUN_FILES:
        assert (out / name).is_file(), name
    epochs = [json.loads(line)["epoch"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]


def test_config_file_with_overrides(capsys, cache_dir, tmp_path):
    cfg = RunConfig()
    cfg.model.K, cfg.train.beta, cfg.model.family = 16, 3.0, "gaussian"
    path = tmp_path / "base.json"
    cfg.save(path)
    out = tmp_path / "run"
    assert main(tiny(cache_dir, out, "--config", str(path), "--beta", "0.5")) == 0
    saved = RunConfig.load(out / "config.json")
    assert saved.train.beta == 0.5  # flag overrides the file
    assert saved.model.family == "gaussian"  # file overrides the default
    assert saved.model.K == 16


def test_patch_size_sets_the_model_input(capsys, cache_dir, tmp_path):
    out = tmp_path / "run"
    assert main(tiny(cache_dir, out, "--patch-size", "8", "--epochs", "1")) == 0
    saved = RunConfig.load(out / "config.json")
    assert (saved.data.patch_size, saved.model.input_dim) == (8, 64)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "extra, words",
    [
        (["--beta", "-1"], ["train.beta"]),
        (["--K", "0"], ["model.K"]),
        (["--family", "foo"], ["'foo'", "poisson", "gaussian_relu"]),
        (["--estimator", "nope"], ["train.estimator"]),
        (["--patch-size", "1"], ["patch_size"]),
    ],
)
def test_invalid_settings_fail_before_any_work(capsys, tmp_path, extra, words):
    out, cache = tmp_path / "run", tmp_path / "cache"
    assert_error(capsys, tiny(cache, out, *extra), *words)
    assert not out.exists() and not cache.exists()


def test_bad_config_files(capsys, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"model": {"K": 16, "colour": "red"}}))
    assert_error(capsys, tiny(cache, out, "--config", str(unknown)), "colour")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"model": {"K": 16,')
    assert_error(capsys, tiny(cache, out, "--config", str(corrupt)), str(corrupt))
    assert_error(capsys, tiny(cache, out, "--config", str(tmp_path / "missing.json")), "missing.json")
    assert not out.exists() and not cache.exists()


def test_resume_errors(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_error(capsys, ["train", "--resume", str(empty)], "config.json", str(empty))
    assert list(empty.iterdir()) == []
    assert_error(capsys, ["train", "--resume", str(tmp_path / "nowhere")], "no such directory")
    RunConfig().save(empty / "config.json")
    assert_error(capsys, ["train", "--resume", str(empty), "--beta", "2"], "--resume", "train.beta")


def test_empty_image_folder_writes_nothing(capsys, tmp_path):
    images, out = tmp_path / "images", tmp_path / "run"
    images.mkdir()
    assert_error(capsys, tiny(tmp_path / "cache", out, "--source", str(images)), "no supported images", str(images))
    assert not out.exists()


def test_out_must_not_be_a_file(capsys, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a directory")
    assert_error(capsys, tiny(tmp_path / "cache", out), "not a directory")
