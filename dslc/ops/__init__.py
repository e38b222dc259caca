"""The op registry, populated by importing every family module. See registry.py."""
from . import activation, conv, dense, elementwise, layout, loss, norm, pool, recurrent, tensor  # noqa: F401  (registration)
from . import random  # noqa: F401,E402  (registration: sample, gaussian_like)
from . import stochastic  # noqa: F401,E402  (registration: drop_path, dropconnect_dense)
from .registry import OPS, REQUIRED, Attr, OpDef, ParamSpec, ShapeError, TensorType

__all__ = ["OPS", "REQUIRED", "Attr", "OpDef", "ParamSpec", "ShapeError", "TensorType"]
