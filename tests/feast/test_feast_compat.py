"""The Feast version check: silent on the tested version, a readable refusal naming each missing
internal and the switch back when an upgrade removed one, a warning when only the version differs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from feast_ext import compat as feast_compat
from feast_ext.compat import FeastInternal, FeastVersionError, check_feast


def test_the_installed_feast_is_the_tested_one_and_has_every_internal():
    assert feast_compat.installed_feast_version() == feast_compat.TESTED_FEAST_VERSION
    assert feast_compat.missing_internals() == []
    check_feast()  # silent


def test_a_feast_without_an_internal_is_refused_with_what_is_missing_and_the_switch_back(monkeypatch):
    monkeypatch.setattr(feast_compat, "installed_feast_version", lambda: "0.99.0")
    gone = FeastInternal("feast.infra.online_stores.redis", "RedisOnlineStore._renamed_in_099",
                         "serving/features.py (pipelined HMGET)")
    monkeypatch.setattr(feast_compat, "FEAST_INTERNALS", (*feast_compat.FEAST_INTERNALS, gone))
    with pytest.raises(FeastVersionError) as raised:
        check_feast("the serving layer")
    message = str(raised.value)
    assert "tested with feast==0.67.0; the installed feast 0.99.0 lacks:" in message
    assert "RedisOnlineStore._renamed_in_099  (used by serving/features.py (pipelined HMGET))" in message
    assert "online_store.type: redis" in message and "RECSYS_SERVING_ONLINE_READS=feast" in message
    assert "Traceback" not in message


def test_another_version_with_every_internal_only_warns(monkeypatch):
    monkeypatch.setattr(feast_compat, "installed_feast_version", lambda: "0.68.0")
    with pytest.warns(UserWarning, match="feast 0.68.0 is installed; .* tested with 0.67.0"):
        check_feast()


def test_serving_refuses_to_start_on_a_feast_without_its_internals(tmp_path):
    """`python -m serving` exits with the message, not a stack trace."""
    script = ("import feast_ext.compat as c\n"
              "c.installed_feast_version = lambda: '0.99.0'\n"
              "c.FEAST_INTERNALS = (c.FeastInternal('feast', 'no_such_thing', 'a test'),)\n"
              "import serving.__main__ as m\n"
              "m.main()\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "feast.no_such_thing  (used by a test)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_each_internal_is_listed_once_with_every_user():
    keys = [(internal.module, internal.name) for internal in feast_compat.FEAST_INTERNALS]
    assert len(keys) == len(set(keys))
