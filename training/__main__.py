"""`python -m training --help`: each step of the offline pipeline (the whole demo: `python -m workflows demo`)."""

from training.cli import app

app()
