"""Raw data layer: the raw schema, validation/ingestion and the synthetic data generator."""
