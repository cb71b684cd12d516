from kbguard.cli.main import run

run()
