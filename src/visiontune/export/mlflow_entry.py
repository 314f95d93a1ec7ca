"""The code an MLflow model logged by `visiontune export --mlflow` is loaded from ("models from code": no pickle).

MLflow runs this file when it loads the model; it names the model class, whose `load_context`
then loads the bundle stored among the model's artifacts.
"""

import mlflow

from visiontune.export.mlflow_model import BundleModel

mlflow.models.set_model(BundleModel())
