"""Prefect task adapters: one thin task per pipeline step, each calling ``pbf_core``.

``tasks.tracking`` is the only module of the pipeline that talks to MLflow.
"""
