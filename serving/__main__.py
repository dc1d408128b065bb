"""`python -m serving`: the API under uvicorn (one process), host and port from ServingSettings."""

from __future__ import annotations

import logging
import os

from serving.settings import get_serving_settings


def main() -> None:
    settings = get_serving_settings()
    # OpenMP libraries (FAISS, LightGBM, torch each bring one) read this when they load: one thread
    # per call, as requests already run concurrently and spinning OpenMP teams cost more than they
    # save on small per-request work.
    os.environ.setdefault("OMP_NUM_THREADS", str(settings.num_threads))

    import uvicorn

    from serving.app import create_app

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=settings.log_level, workers=1)


if __name__ == "__main__":
    main()
