"""The child process of `serving.bundle_check`: load a bundle as the server does and score one row
with every model in it; exit 0 (good), 3 (rejected, the reason on stderr) or die trying."""

from __future__ import annotations

import json
import sys

from serving.torch_free import keep_torch_out

keep_torch_out()  # as in `python -m serving`: the bundle loads without torch

from core.bundle import BundleError  # noqa: E402
from serving.model import LoadedModel  # noqa: E402


def main() -> int:
    request = json.loads(sys.stdin.read())
    try:
        LoadedModel.load(request["bundle_dir"], request["expected_features"], request["candidates"])
    except BundleError as error:
        print(str(error).replace("\n", " "), file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
