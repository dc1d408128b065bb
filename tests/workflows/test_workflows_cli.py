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
