"""xpmlp: multilayer perceptrons written once against the Python Array API.

The same hand-written forward and backward passes run on NumPy (CPU), CuPy (CUDA GPU) or any
Array API library; pick one with ``device="cpu" | "cuda" | "auto"`` (or ``xp=`` a namespace).
"""

from .backend import Backend, DeviceMismatchError, available_backends, resolve, to_numpy
from .layers import (ACTIVATIONS, ELU, GELU, Activation, Dense, Dropout, Identity, Layer, LeakyReLU,
                     ReLU, Sigmoid, Softmax, Softplus, Standardize, Tanh)
from .losses import (LOSSES, Huber, Loss, MeanAbsoluteError, MeanSquaredError, SigmoidBinaryCrossEntropy,
                     SoftmaxCrossEntropy)
from .lbfgs import LBFGS
from .model import MLP, Sequential, load
from .optim import OPTIMIZERS, SGD, Adagrad, Adam, AdamW, Optimizer, RMSprop
from . import callbacks, datasets, metrics, schedules
from .io import ModelFileError
from .train import DivergenceError, History
from .doctor import DoctorWarning, Finding, Report, diagnose
from .lr_find import LRFinderResult
from .chunked import Chunked

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # The estimators subclass scikit-learn's BaseEstimator when it is installed, so they are
    # imported on first use: ``import xpmlp`` itself never imports scikit-learn.
    if name in ("MLPClassifier", "MLPRegressor"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'xpmlp' has no attribute {name!r}")


__all__ = [
    "Backend", "DeviceMismatchError", "available_backends", "resolve", "to_numpy",
    "ACTIVATIONS", "ELU", "GELU", "Activation", "Dense", "Dropout", "Identity", "Layer", "LeakyReLU",
    "ReLU", "Sigmoid", "Softmax", "Softplus", "Standardize", "Tanh",
    "LOSSES", "Huber", "Loss", "MeanAbsoluteError", "MeanSquaredError", "SigmoidBinaryCrossEntropy",
    "SoftmaxCrossEntropy",
    "MLP", "Sequential", "MLPClassifier", "MLPRegressor", "History", "DivergenceError", "load", "ModelFileError",
    "callbacks", "datasets", "metrics", "schedules",
    "diagnose", "Finding", "Report", "DoctorWarning", "LRFinderResult", "Chunked",
    "OPTIMIZERS", "SGD", "Adagrad", "Adam", "AdamW", "Optimizer", "RMSprop", "LBFGS",
]
