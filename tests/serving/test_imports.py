"""The ranker process loads what serving needs and not the offline stack: importing the app must not
import torch (the user tower runs in numpy from the bundle's weights; `python -m serving` keeps
Feast from importing it, serving/torch_free.py), pyspark, matplotlib or duckdb
(each costs start time and resident memory in every worker). tqdm is not in the list: Feast's own
`feast/feature_store.py` imports it, and the service needs Feast's FeatureStore."""

from __future__ import annotations

import json
import subprocess
import sys

OFFLINE_ONLY = ("torch", "pyspark", "matplotlib", "duckdb")


def test_importing_the_service_does_not_load_the_offline_stack():
    script = ("import json, sys\n"
              "import serving.__main__, serving.app\n"
              f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({OFFLINE_ONLY!r}))))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
