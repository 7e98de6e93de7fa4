"""The pipeline's steps, in data-flow order: one typed function each, one frozen result each.

The ``pbf`` commands (``flows/cli/``) and the Prefect tasks (``tasks/``) both call these
functions; neither has a copy of a step. Each step lives in its stage package:

=========================  ===========================  =====================  =========================
step                       function                     result                 defined in
=========================  ===========================  =====================  =========================
synthesise a build         :func:`generate_build`       manifest (dict)        ``data/synthetic/``
ingest                     :func:`discover_layers`      ``DiscoveredLayers``   ``data/prepare.py``
filter + label one layer   :func:`prepare_layer`        ``LayerOutcome``       ``data/prepare.py``
write the dataset          :func:`write_dataset`        ``PreparedDataset``    ``data/prepare.py``
(all three, ``pbf prepare``) :func:`prepare_dataset`    ``PreparedDataset``    ``data/prepare.py``
split                      :func:`split_dataset`        ``PreparedDataset``    ``data/split.py``
train                      :func:`train_model`          ``TrainedModel``       ``model/training.py``
evaluate (any model file)  :func:`evaluate_model`       ``Evaluation``         ``evaluation/scores.py``
held-out style check       :func:`evaluate_held_out`    ``HeldOutScores``      ``evaluation/held_out.py``
adapt to a user's printer  :func:`adapt_model`          ``AdaptedModel``       ``model/adaptation.py``
export                     :func:`export_model`         ``ExportedModel``      ``deploy/export.py``
quantize + parity gate     :func:`quantize_model`       ``QuantizedModel``     ``deploy/quantization.py``
benchmark                  :func:`benchmark_model`      ``BenchmarkReport``    ``bench/runner.py``
promotion gate             :func:`decide_promotion`     ``Decision``           ``evaluation/promotion.py``
score a whole build        :func:`score_build`          ``BuildScore``         ``scoring/build.py``
=========================  ===========================  =====================  =========================

The champion is scored for the gate by :func:`evaluate_model` on the candidate's evaluation
layers (a :class:`Champion`). Registering, aliasing and packaging talk to MLflow and BentoML, so they live in
``tasks/`` (``tasks/tracking/``, ``tasks/packaging.py``).
"""

from __future__ import annotations

from pbf_core.bench.report import BenchmarkReport
from pbf_core.bench.runner import benchmark_model
from pbf_core.data.dataset import PreparedDataset, open_dataset
from pbf_core.data.prepare import (
    DiscoveredLayers,
    LayerOutcome,
    discover_layers,
    prepare_dataset,
    prepare_layer,
    prepared_dir,
    write_dataset,
)
from pbf_core.data.split import Split, split_dataset
from pbf_core.data.synthetic import generate_build
from pbf_core.deploy.export import ExportedModel, export_model
from pbf_core.deploy.quantization import QuantizedModel, quantize_model
from pbf_core.evaluation.held_out import HeldOutScores, evaluate_held_out
from pbf_core.evaluation.promotion import Champion, Decision, decide_promotion
from pbf_core.evaluation.scores import Evaluation, evaluate_model
from pbf_core.model.adaptation import AdaptedModel, adapt_model
from pbf_core.model.training import TrainedModel, train_model
from pbf_core.scoring.build import BuildScore, score_build

__all__ = [
    "AdaptedModel",
    "BenchmarkReport",
    "BuildScore",
    "Champion",
    "Decision",
    "DiscoveredLayers",
    "Evaluation",
    "ExportedModel",
    "HeldOutScores",
    "LayerOutcome",
    "PreparedDataset",
    "QuantizedModel",
    "Split",
    "TrainedModel",
    "adapt_model",
    "benchmark_model",
    "decide_promotion",
    "discover_layers",
    "evaluate_held_out",
    "evaluate_model",
    "export_model",
    "generate_build",
    "open_dataset",
    "prepare_dataset",
    "prepare_layer",
    "prepared_dir",
    "quantize_model",
    "score_build",
    "split_dataset",
    "train_model",
    "write_dataset",
]
