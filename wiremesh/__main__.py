from wiremesh.cli.main import app

app()
