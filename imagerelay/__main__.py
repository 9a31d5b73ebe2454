from imagerelay.cli import app

app(prog_name="imagerelay")
