"""`python -m visiontune` is the `visiontune` command."""

from visiontune.cli.main import run

run()
