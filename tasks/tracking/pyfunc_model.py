"""The MLflow pyfunc model of a registered version: layer files in, mask and components out.

Logged "from code" (MLflow's models-from-code: this file is the model, nothing is pickled) with
the version's ONNX file as its one artifact and ``pbf_core`` as its code, so that
``mlflow.pyfunc.load_model("models:/pbf-defect-segmenter@champion").predict(table)`` and
``mlflow models serve -m models:/pbf-defect-segmenter@champion`` give a user a mask with the
model's own threshold. The logic stays in :mod:`pbf_core.deploy.predictions`.

Input: a table (pandas DataFrame; over REST, ``dataframe_split`` or ``dataframe_records``), one
row per layer, with an ``image`` column or ``a``, ``b``, ``c`` columns holding the encoded files
(PNG, TIFF, JPEG or BMP; base64 text over REST). Output: one row per layer (see
:func:`pbf_core.deploy.predictions.prediction_record`).
"""

import mlflow
from mlflow.pyfunc import PythonModel


class LayerSegmentationModel(PythonModel):
    """Segments each row's layer with the ONNX file of the version (ONNX Runtime on CPU)."""

    def load_context(self, context):
        from pbf_core.deploy.inference import Segmenter

        self._segmenter = Segmenter.from_onnx(context.artifacts["onnx"])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from pbf_core.deploy.predictions import decode_layer, prediction_record

        rows = pd.DataFrame(model_input).to_dict("records")
        views = self._segmenter.spec.views
        return pd.DataFrame(
            [prediction_record(self._segmenter.segment(decode_layer(r, views))) for r in rows]
        )


mlflow.models.set_model(LayerSegmentationModel())
