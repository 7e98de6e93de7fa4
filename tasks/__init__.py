"""Prefect task adapters: one thin task per pipeline step, each calling :mod:`pbf_core.steps`.

``data`` (synthetic build, ingest, per-layer preparation, dataset, split), ``model`` (train,
evaluate, export, quantize, benchmark), ``runs`` (the MLflow run), ``registry`` (register, score
the champion, decide, promote, package), ``reports`` (Prefect artifacts). The MLflow code itself
is in ``tasks/tracking/`` (no Prefect there); BentoML packaging in ``tasks/packaging.py``.
"""
