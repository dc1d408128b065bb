"""Time-based splits. Never random: every period starts where the one before it ends."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, timedelta


@dataclass(frozen=True)
class TimeSplit:
    """Four consecutive periods of whole UTC days.

    retrieval  [start, ranker_start): retrieval models and baselines learn from these events.
    ranker     [ranker_start, val_start): requests whose candidates train the ranker.
    validation [val_start, test_start): early stopping of the two-tower and the ranker.
    test       [test_start, end): held out; evaluated once, at `test_start`.
    """

    start: date
    ranker_start: date
    val_start: date
    test_start: date
    end: date  # exclusive

    def __post_init__(self) -> None:
        bounds = [self.start, self.ranker_start, self.val_start, self.test_start, self.end]
        if any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"split periods must be non-empty and in order: {bounds}")

    @classmethod
    def from_days(cls, first_day: date, last_day: date, test_days: int = 7, val_days: int = 7,
                  ranker_days: int = 14) -> TimeSplit:
        end = last_day + timedelta(days=1)
        test_start = end - timedelta(days=test_days)
        val_start = test_start - timedelta(days=val_days)
        ranker_start = val_start - timedelta(days=ranker_days)
        if ranker_start <= first_day:
            raise ValueError(f"{(end - first_day).days} days of data cannot hold test={test_days}, "
                             f"validation={val_days}, ranker={ranker_days} days plus a retrieval period")
        return cls(first_day, ranker_start, val_start, test_start, end)

    def to_dict(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in asdict(self).items()}
