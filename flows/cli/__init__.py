"""The ``pbf`` command: every command of the project, registered on one app.

Each command calls the pipeline's step functions (:mod:`pbf_core.steps`) or, for ``run`` and
``serve-flow``, the Prefect flow that composes the same steps. Heavy modules are imported inside
the commands, so ``pbf --help`` stays fast.
"""

from __future__ import annotations

import typer

from flows.cli import data, model, pipeline, scoring
from flows.cli.common import friendly_errors

app = typer.Typer(
    help="Find defects in powder-bed-fusion layer images: prepare data, train, quantize, "
    "benchmark, run the whole pipeline, package the champion for serving.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

COMMANDS = {
    "synth": data.synth,
    "prepare": data.prepare,
    "train": model.train,
    "evaluate": model.evaluate,
    "held-out": model.held_out,
    "adapt": model.adapt,
    "predict": model.predict,
    "quantize": model.quantize,
    "benchmark": model.benchmark,
    "score": scoring.score,
    "run": pipeline.run,
    "serve-flow": pipeline.serve_flow,
    "package": pipeline.package,
}
for _name, _command in COMMANDS.items():
    app.command(_name)(friendly_errors(_command))

__all__ = ["app"]
