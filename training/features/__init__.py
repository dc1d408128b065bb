"""Spark feature pipelines: raw events -> daily feature snapshots that Feast sources read.

Every row carries `event_timestamp`, the time it became known: a snapshot stamped T is computed
from events strictly before T.
"""
