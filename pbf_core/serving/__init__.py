"""Serving without BentoML: what ``service.py`` delegates to.

- :mod:`~pbf_core.serving.settings`: ``ServeSettings``, the ``PBF_SERVE_*`` variables;
- :mod:`~pbf_core.serving.uploads`: upload fields, their checks and decoding; ``UploadError``;
- :mod:`~pbf_core.serving.guard`: ``RequestGuard``, the ASGI middleware in front of uploads;
- :mod:`~pbf_core.serving.page`: the page's app (``/``, ``/static``, ``GET /model``);
- :mod:`~pbf_core.serving.model`: ``ServedModel`` built from a package or a registry file;
- :mod:`~pbf_core.serving.runner`: the model in this process or in the batching service;
- :mod:`~pbf_core.serving.segmentation`: uploads → ``LayerResult`` with the served model;
- :mod:`~pbf_core.serving.answers`: the ``/segment`` JSON, the ``/overlay`` PNG and headers;
- :mod:`~pbf_core.serving.memory`: heap tuning of long-running serving processes.

``service.py`` holds the BentoML classes, their API signatures and where the model comes from.
Nothing here imports BentoML, Prefect or MLflow.
"""
