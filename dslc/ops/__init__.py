"""The op registry, populated by importing every family module. See registry.py."""
from . import activation, conv, dense, loss, norm, pool, recurrent, tensor  # noqa: F401  (registration)
from .registry import OPS, REQUIRED, Attr, OpDef, ParamSpec, ShapeError, TensorType

__all__ = ["OPS", "REQUIRED", "Attr", "OpDef", "ParamSpec", "ShapeError", "TensorType"]
