"""Keep torch out of the serving process.

Serving needs no torch: the user tower runs in numpy from the bundle's weights
(`core.inference.two_tower.UserTower`). Feast imports torch anyway when it is installed
(`feast/torch_wrapper.py`, at `import feast`, tolerating its absence), which costs every worker
~185 MB of resident memory and seconds of start time. `python -m serving` calls `keep_torch_out()`
before anything imports Feast: torch then looks uninstalled to this process.
"""

from __future__ import annotations

import sys
from importlib.abc import MetaPathFinder

BLOCKED = "torch"


class _TorchBlocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == BLOCKED or name.startswith(BLOCKED + "."):
            raise ModuleNotFoundError(f"{BLOCKED} is kept out of the serving process (serving/torch_free.py)",
                                      name=name)
        return None


def keep_torch_out() -> None:
    """Make `import torch` fail in this process (call before Feast is imported)."""
    if BLOCKED in sys.modules:
        return  # too late to matter; the process already paid for it
    if not any(isinstance(finder, _TorchBlocker) for finder in sys.meta_path):
        sys.meta_path.insert(0, _TorchBlocker())
