"""Offline training pipeline: data, features, models and evaluation."""
