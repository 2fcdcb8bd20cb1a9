from fedsim.cli.main import app

app(prog_name="fedsim")
