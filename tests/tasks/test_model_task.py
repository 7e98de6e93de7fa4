"""The train task without a server: its log counts epochs as `pbf train` prints them."""

from __future__ import annotations

from contextlib import nullcontext
from types import SimpleNamespace

import tasks.model as model_tasks
from pbf_core.config import TrainConfig


def test_train_task_logs_epochs_counted_from_one(monkeypatch):
    lines: list[str] = []
    logged: list[dict] = []

    class _Logger:
        def info(self, fmt: str, *args) -> None:
            lines.append(fmt % args)

    def fake_train(dataset, cfg, out, on_epoch_end, progress):
        for epoch in range(2):
            on_epoch_end({"epoch": epoch, "train_loss": 0.5})
        return "trained"

    monkeypatch.setattr(model_tasks, "get_run_logger", lambda: _Logger())
    monkeypatch.setattr(model_tasks.runs, "epoch_logger", lambda run_id: logged.append)
    monkeypatch.setattr(model_tasks.runs, "system_metrics", lambda run_id: nullcontext())
    monkeypatch.setattr(model_tasks.steps, "train_model", fake_train)
    run = SimpleNamespace(run_id="r1")
    assert model_tasks.train.fn(None, TrainConfig(epochs=2), run, "out") == "trained"
    assert lines == ["epoch 1/2: train_loss 0.5", "epoch 2/2: train_loss 0.5"]
    assert [m["epoch"] for m in logged] == [0, 1]  # MLflow's step stays the 0-based index
