"""The app factory of uvicorn's worker processes (`RECSYS_SERVING_WORKERS` > 1).

Each worker is a fresh interpreter that imports this module by name, so torch is kept out here, before
`serving.app` brings Feast in (see serving/torch_free.py); `python -m serving` does the same for a
single process.
"""

from serving.torch_free import keep_torch_out

keep_torch_out()

from serving.app import create_app  # noqa: E402

__all__ = ["create_app"]
