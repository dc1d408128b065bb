"""The demo's terminal story: stage lines on the terminal, everything else in the log file."""

from __future__ import annotations

import logging
import subprocess
import warnings

import pytest

from workflows.story import StageFailed, Story


def test_the_terminal_gets_one_line_per_stage_and_the_log_gets_everything_else(tmp_path, capfd):
    log = tmp_path / "logs" / "demo.log"

    def noisy_stage() -> int:
        print("a detailed print")
        warnings.warn("The spark data source API is an experimental feature", RuntimeWarning)
        logging.getLogger("some.library").warning("a library log record")
        subprocess.run(["sh", "-c", "echo child stdout; echo child stderr >&2"], check=True)
        return 3

    with Story(log) as story:
        assert story.stage("generate", noisy_stage, lambda n: f"{n} tables") == 3
        with pytest.raises(StageFailed, match="train failed: division by zero"):
            story.stage("train", lambda: 1 / 0)
    print("after the story")

    terminal = capfd.readouterr().out
    written = log.read_text()
    assert str(log) in terminal and "after the story" in terminal
    assert any(line.startswith("ok generate") and line.endswith("3 tables") for line in terminal.splitlines())
    assert "FAILED train" in terminal and "ZeroDivisionError" in terminal  # with the log's last lines
    before_the_failure = terminal.split("FAILED train")[0]
    for detail in ("a detailed print", "experimental feature", "a library log record", "child stdout", "child stderr"):
        assert detail in written, detail
        assert detail not in before_the_failure, detail
    assert "Traceback" in written and "1 / 0" in written
    assert story.seconds.keys() == {"generate"}
