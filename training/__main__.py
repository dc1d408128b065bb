"""`python -m training --help`: each step of the offline pipeline, and the whole demo."""

from training.cli import app

app()
