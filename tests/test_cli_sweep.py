"""`poissonvae sweep`, `figures` and `report` end to end on a tiny grid."""

import pandas as pd

from poissonvae.cli import main

TINY = ["--K", "4", "8", "--beta", "0.1", "2", "--epochs", "2", "--warmup-epochs", "0", "--batch-size", "250",
        "--n-train", "1000", "--n-val", "300", "--patch-size", "4", "--no-progress"]


def test_sweep_command_writes_table_figures_and_report(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", *TINY, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)]) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 8 and set(df.K) == {4, 8}
    assert (out / "report.md").is_file() and (out / "figures" / "fig4_metabolic_cost.png").is_file()
    printed = capsys.readouterr().out
    assert "results:" in printed and "report:" in printed
    assert main(["report", str(out), "--format", "html"]) == 0
    assert (out / "report.html").is_file()
    assert main(["figures", str(out), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "fig7_pies.pdf").is_file()


def test_sweep_command_rejects_bad_grids_before_any_work(tmp_path, capsys):
    for bad, message in ((["--K", "0"], "Ks must be integers >= 1"), (["--beta", "1", "1"], "duplicate"),
                         (["--families", "poisson", "cauchy"], "unknown latent families"),
                         (["--beta", "-0.5"], "betas must be"), (["--epochs", "0"], "train.epochs")):
        code = main(["sweep", *bad, "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "s"), "--no-progress"])
        assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "s").exists() and not (tmp_path / "cache").exists()
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "results.parquet" in capsys.readouterr().err


def test_gap_command_runs_lca_on_a_trained_dictionary(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--K", "8", "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "250", "--n-train",
                 "1000", "--n-val", "300", "--patch-size", "4", "--cache-dir", str(tmp_path / "c"), "--out", str(run),
                 "--no-progress"]) == 0
    assert main(["gap", str(run), "--penalties", "0.05", "0.5", "--n-val", "100"]) == 0
    table = pd.read_csv(run / "gap_lca.csv")
    assert list(table.penalty) == [0.05, 0.5] and (table.mse > 0).all()
    # a larger penalty gives sparser codes
    assert table.proportion_zeros.iloc[1] >= table.proportion_zeros.iloc[0]
    capsys.readouterr()
    assert main(["gap", str(tmp_path), "--penalties", "1"]) == 2
    assert "not a finished run directory" in capsys.readouterr().err
    assert main(["gap", str(run), "--penalties", "-1"]) == 2
