"""PBF defect segmentation: the pure domain library.

Nothing here imports prefect, mlflow or bentoml; the orchestration (``tasks``, ``flows``) and the
service wrap these functions.
"""

__version__ = "0.1.0"
