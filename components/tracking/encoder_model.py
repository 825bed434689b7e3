"""MLflow "models from code" entry point for the registered encoder (no pickled Python objects).

MLflow copies this file into each logged model and executes it on load; the model's artifact
``checkpoint`` (the ``save_encoder`` file) is read by :class:`EncoderPyfunc`. Loading needs the
``components`` package importable (this project installed), like any other use of the encoder.
"""

from mlflow.models import set_model

from components.tracking.registry import EncoderPyfunc

set_model(EncoderPyfunc())
