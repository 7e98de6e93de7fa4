"""All MLflow code of the project, in three pieces and no Prefect:

- :mod:`tasks.tracking.store`: where runs and models go (the tracking URI, resolved once per
  process) and a client for it;
- :mod:`tasks.tracking.runs`: a pipeline run's params, dataset, metrics and artifacts;
- :mod:`tasks.tracking.registry`: model versions, their aliases (with rollback), and downloading
  the version an alias points at (used by the flow, ``pbf package`` and the service).

The Prefect tasks over them are in :mod:`tasks.runs` and :mod:`tasks.registry`.
"""
