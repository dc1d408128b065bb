"""Ranker requests grouped into chunks whose sources are fitted on the events before each chunk."""

from __future__ import annotations

import numpy as np
import pytest

from training.pipeline import refit_chunks

DAY = 86_400


def test_chunks_start_at_whole_periods_and_never_after_their_requests():
    start = 1_000 * DAY
    times = np.array([start + 8 * DAY + 5, start + 1, start + 6 * DAY, start + 15 * DAY, start + 7 * DAY])
    chunks = refit_chunks(times, start, 7)
    assert [(fit - start) // DAY for fit, _ in chunks] == [0, 7, 14]
    assert [positions.tolist() for _, positions in chunks] == [[1, 2], [0, 4], [3]]
    for fit, positions in chunks:
        assert np.all(times[positions] >= fit) and np.all(times[positions] < fit + 7 * DAY)


def test_one_chunk_without_refits_and_no_request_before_the_start():
    start = 50 * DAY
    times = np.array([start + 3, start + 40 * DAY])
    [(fit, positions)] = refit_chunks(times, start, None)
    assert fit == start and positions.tolist() == [0, 1]
    assert refit_chunks(np.zeros(0, dtype=np.int64), start, 7) == []
    with pytest.raises(ValueError, match="before the window"):
        refit_chunks(np.array([start - 1]), start, 7)
