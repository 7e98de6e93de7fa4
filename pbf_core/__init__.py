"""PBF defect segmentation: the pure domain library, laid out like the data flow.

- ``data/``: raw layers → a prepared, split dataset (ingest, synthetic builds, imaging,
  filtering, weak labels, prepare, dataset, split).
- ``model/``: the network, its spec and checkpoints, the training loop and the train step.
- ``evaluation/``: metrics, the evaluate step and its report files, the promotion gate.
- ``deploy/``: ONNX export, int8 quantization and its parity gate, runtimes, tiled inference,
  overlays.
- ``bench/``: the inference benchmark (each variant in its own process).
- ``serving/``: what the BentoML service does, without BentoML.
- ``steps.py``: the index of the pipeline's steps, one typed function each, in data-flow order;
  the ``pbf`` commands and the Prefect tasks both call them. ``summary.py``: a run's result.
- ``config/``, ``errors.py``, ``files.py``: configs (one module per stage), typed errors, file
  helpers.

Nothing here imports prefect, mlflow or bentoml; the orchestration (``tasks``, ``flows``) and the
service wrap these functions.
"""

__version__ = "0.1.0"
