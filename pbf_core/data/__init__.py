"""Data: raw layers in, a prepared (and split) dataset out.

``layers`` (what a raw layer is), ``ingest`` and ``archives`` (find layer sets in folders and
zips), ``synthetic`` (the offline default build), ``imaging`` (16-bit reading, normalising,
writing), ``filtering`` (unusable frames), ``labels`` (weak labels by classical vision),
``prepare`` (the prepare steps), ``dataset`` (the prepared dataset), ``split`` (the split step).
"""
