"""``python -m flows.cli`` is the ``pbf`` command."""

from flows.cli import app

app()
