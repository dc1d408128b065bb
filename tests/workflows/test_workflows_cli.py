"""The end-to-end CLI's own checks, before any Spark job starts."""

from __future__ import annotations

from typer.testing import CliRunner

from workflows.cli import app


def test_movielens_without_the_data_says_where_to_get_it(tmp_path):
    (tmp_path / "u.data").write_text("1\t2\t5\t881250949\n")  # u.user and u.item missing
    result = CliRunner().invoke(app, ["movielens", "--path", str(tmp_path)])
    output = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2
    assert "MovieLens-100K not found" in output and "(missing u.user, u.item)" in output
    assert "GroupLens" in output and "Traceback" not in output


def test_the_demo_trains_with_plain_settings_not_typer_option_objects(monkeypatch):
    """The demo calls the training commands as functions: a default left to typer would arrive as
    an `OptionInfo` (`tuple(OptionInfo)` once broke `make demo`'s train stage). Only the glue runs
    here; the pipeline itself is the training tests'."""
    import training.pipeline
    import training.spark
    from feast_ext import repo as feast_repo
    from training.cli import train_bundle

    seen = {}
    monkeypatch.setattr(training.spark, "get_spark", lambda name: name)
    monkeypatch.setattr(feast_repo, "feature_store", lambda: "store")
    monkeypatch.setattr(training.pipeline, "run_training",
                        lambda spark, store, settings, config: seen.update(spark=spark, config=config) or "bundle")
    assert train_bundle(max_ranker_requests=10, epochs=2) == "bundle"
    config = seen["config"]
    assert (config.max_ranker_requests, config.two_tower.epochs, config.ranker_kinds) == (10, 2, ("lightgbm",))
    assert seen["spark"] == "training"
