"""Build scores in a SQL database their dashboards can query: SQLite by default, PostgreSQL by URL.

Three tables, keyed by the build (its resolved path) and the layer:

- ``pbf_layers``: one row per layer of a build (the ``layers.parquet`` row);
- ``pbf_components``: one row per 2D component (build, layer, label) with its 3D defect id;
- ``pbf_defects``: one row per 3D defect of a build.

:func:`upsert_build` replaces a build's rows in one transaction (its layers' and components'
rows and its defects, since a new layer can join two defects), so a rerun never
duplicates a row and a failure leaves the previous rows in place.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pbf_core.scoring.build import BuildScore


def _tables(metadata):
    from sqlalchemy import Boolean, Column, Float, Integer, String, Table

    def key(*names):
        return [
            Column(n, String if n in ("build", "layer") else Integer, primary_key=True)
            for n in names
        ]

    layers = Table(
        "pbf_layers", metadata, *key("build", "layer"), Column("index", Integer),
        Column("usable", Boolean), Column("reason", String), Column("height", Integer),
        Column("width", Integer), Column("defect_pixels", Integer), Column("area_pct", Float),
        Column("components", Integer), Column("max_prob", Float), Column("truth_pixels", Integer),
        Column("threshold", Float), Column("seconds", Float), Column("digest", String),
        Column("model", String),
    )  # fmt: skip
    components = Table(
        "pbf_components", metadata, *key("build", "layer", "label"), Column("z", Integer),
        *(Column(n, Integer) for n in ("x0", "y0", "x1", "y1", "area")), Column("max_prob", Float),
        Column("cx", Float), Column("cy", Float), Column("defect_id", Integer),
    )  # fmt: skip
    defects = Table(
        "pbf_defects", metadata, *key("build", "id"),
        *(Column(n, Integer) for n in ("z_min", "z_max", "layers", "voxels", "x0", "y0", "x1", "y1")),
        Column("max_prob", Float),
    )  # fmt: skip
    return layers, components, defects


def upsert_build(url: str, build: str, result: BuildScore, model: str) -> dict[str, int]:
    """Write a build's rows (replacing its earlier ones); returns the rows per table.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///.pbf/results.db`` or ``postgresql://...``.
        build: the build's key (its resolved path).
        result: what :func:`pbf_core.scoring.build.score_build` found.
        model: the model's name, stored with each layer.
    """
    from sqlalchemy import MetaData, create_engine, delete

    engine = create_engine(url)
    metadata = MetaData()
    layers, components, defects = _tables(metadata)
    metadata.create_all(engine)
    ids = iter(result.defect_ids)
    rows = {
        layers: [{**asdict(s.score), "build": build, "model": model} for s in result.layers],
        components: [{**asdict(c), "build": build, "defect_id": next(ids)}
                     for s in result.layers for c in s.components],
        defects: [{**d.to_dict(), "build": build} for d in result.defects],
    }  # fmt: skip
    with engine.begin() as conn:
        for table, data in rows.items():
            conn.execute(delete(table).where(table.c.build == build))
            if data:
                conn.execute(table.insert(), data)
    engine.dispose()
    return {t.name: len(d) for t, d in rows.items()}
