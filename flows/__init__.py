"""Prefect flows composing the tasks; ``flows.cli`` is the ``pbf`` command line."""
