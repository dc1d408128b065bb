"""Training sets: time splits, labelled requests (Spark) and their point-in-time features (Feast)."""
