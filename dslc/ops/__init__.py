"""The op registry, populated by importing every family module. See registry.py."""
from . import (  # noqa: F401  (registration)
    activation,
    conv,
    dense,
    elementwise,
    layout,
    loss,
    norm,
    pool,
    random,  # noqa: F401,E402  (registration: sample, gaussian_like)
    recurrent,
    roi,  # noqa: F401  (registration: roi_pool, roi_align)
    stochastic,  # noqa: F401,E402  (registration: drop_path, dropconnect_dense)
    tensor,
)
from .registry import OPS, REQUIRED, Attr, OpDef, ParamSpec, ShapeError, TensorType

__all__ = ["OPS", "REQUIRED", "Attr", "OpDef", "ParamSpec", "ShapeError", "TensorType"]
