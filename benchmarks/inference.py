"""Inference benchmark: every model variant in one run, beside the prototype's reported numbers.

Usage::

    python benchmarks/inference.py --model runs/synth/model.safetensors --data data/synth \\
        --out benchmarks/results --rounds 3

Measures PyTorch fp32 eager (the reference), the prototype's dynamic int8, ONNX Runtime fp32 and
ONNX Runtime static int8 (calibrated on the training layers of ``--data``): batch-1 latency
p50/p95 and batch-8 throughput at 320² and 512², file size, peak memory, and parity of each
variant's masks with the fp32 model's on the test layers. Writes ``inference.json`` and
``inference.md`` under ``--out``; the ONNX files go to ``--work`` (a temporary directory by
default), not into the repository.

Without ``--model`` an untrained default U-Net/MobileNetV2 is measured: speed, size and memory
are the same as a trained one's, parity is not meaningful. Without ``--data`` a small synthetic
build is generated and prepared for calibration.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from pbf_core.bench.report import format_markdown
from pbf_core.bench.runner import benchmark_model, onnx_files
from pbf_core.config import BenchmarkConfig, PrepareConfig, QuantizeConfig, SynthConfig, TrainConfig
from pbf_core.data.dataset import open_dataset
from pbf_core.data.split import Split, split_dataset

#: The prototype's README (seed/SEED-README.md), "Quantization Impact": its only measurements.
PROTOTYPE = """\
Prototype (as reported in its README; dynamic quantization, PyTorch):

| machine | fp32 size | int8 size | fp32 latency | int8 latency | speedup |
|---|---:|---:|---:|---:|---:|
| MacBook Air M4 (CPU) | ~26 MB | ~26 MB | ~193.58 ms | ~184.54 ms | 1.05x |
| Nvidia 3090 | ~26 MB | ~26 MB | ~44.59 ms | ~40.52 ms | 1.10x |
"""


def _untrained_checkpoint(work: Path) -> Path:
    import torch

    from pbf_core.model.checkpoints import save_checkpoint
    from pbf_core.model.factory import model_from_spec
    from pbf_core.model.spec import ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec(labels="truth")
    return save_checkpoint(work / "untrained.safetensors", model_from_spec(spec), spec)


def _split(model: Path, data: Path):
    """The dataset split as the model was trained (its split.json), or freshly for an untrained one."""
    dataset = open_dataset(data)
    saved = model.parent / "split.json"
    if saved.is_file():
        return dataset.with_split(Split.load(saved))
    split = split_dataset(dataset, TrainConfig(labels="truth")).split
    split.save(saved)
    return dataset.with_split(split)


def _synthetic_data(work: Path) -> Path:
    from pbf_core.data.prepare import prepare_dataset
    from pbf_core.data.synthetic import generate_build

    generate_build(work / "raw", SynthConfig(layers=12, size=512, seed=0))
    prepare_dataset(work / "raw", work / "prepared", PrepareConfig())
    return work / "prepared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="model.safetensors (default: untrained)")
    parser.add_argument("--data", type=Path, help="prepared dataset the model was trained on")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--work", type=Path, help="where the ONNX files go (default: temporary)")
    parser.add_argument("--threads", type=int, help="intra-op threads (default: all cores)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds over all variants")
    parser.add_argument("--iterations", type=int, default=30, help="timed batch-1 runs")
    parser.add_argument("--calibration", default="minmax", help="minmax, entropy, percentile")
    args = parser.parse_args()

    cfg = BenchmarkConfig(threads=args.threads, rounds=args.rounds, iterations=args.iterations)
    qcfg = QuantizeConfig(calibration_method=args.calibration)
    with tempfile.TemporaryDirectory(prefix="pbf-inference-") as tmp:
        work = args.work or Path(tmp)
        model = args.model or _untrained_checkpoint(work)
        data = args.data or _synthetic_data(work)
        dataset = _split(model, data)
        fp32, int8 = onnx_files(model, work / "onnx", dataset, qcfg)
        report = benchmark_model(
            model, fp32, int8, args.out, cfg, dataset=dataset, quantize_cfg=qcfg,
            progress=lambda done, total: print(f"measured {done}/{total}", flush=True),
        )  # fmt: skip
    md = format_markdown(report)
    if args.model is None:
        md = "Untrained model (speed, size and memory only; parity is not meaningful).\n\n" + md
    md += "\n" + PROTOTYPE
    (args.out / "inference.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
