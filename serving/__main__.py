"""`python -m serving`: the API under uvicorn, host, port and worker processes from ServingSettings."""

from __future__ import annotations

import logging
import os
import tempfile

from serving.torch_free import keep_torch_out

keep_torch_out()  # before Feast is imported: Feast would import torch, which serving never uses

from feast_ext.compat import FeastVersionError, check_feast  # noqa: E402
from serving.settings import get_serving_settings  # noqa: E402


def main() -> None:
    try:
        check_feast("the serving layer's Feast reads")
    except FeastVersionError as error:
        raise SystemExit(str(error)) from None
    settings = get_serving_settings()
    try:
        settings.check_exposure()
    except ValueError as error:
        raise SystemExit(f"python -m serving: {error}") from None
    # OpenMP libraries (FAISS, LightGBM, torch each bring one) read this when they load: one thread
    # per call, as requests already run concurrently and spinning OpenMP teams cost more than they
    # save on small per-request work.
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.num_threads))

    import uvicorn

    from serving.metrics import share_metrics_between_workers
    from serving.redact import redact_handlers

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redact_handlers("")  # libraries' records too (Feast, redis)
    if settings.workers == 1:
        from serving.app import create_app

        uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level)
        return
    # The supervisor only starts and watches the workers: it does not import the app (~300 MB).
    # Several processes: each worker builds the app from the same environment (settings come from
    # RECSYS_SERVING_* variables), and they share their metrics through files in a fresh folder.
    with tempfile.TemporaryDirectory(prefix="recsys-serving-metrics-") as metrics_dir:
        share_metrics_between_workers(metrics_dir)
        uvicorn.run("serving.app:create_app", factory=True, host=settings.host, port=settings.port,
                    log_level=settings.log_level, workers=settings.workers)


if __name__ == "__main__":
    main()
