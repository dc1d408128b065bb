from workflows.cli import app

app()
