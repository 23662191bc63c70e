from longrag.cli import app

app(prog_name="longrag")
