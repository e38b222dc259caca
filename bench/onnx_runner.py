"""Inference in onnxruntime on the dslc network exported to ONNX with dslc's own weights.

The export is dslc.runtime.onnx_export's (when that module exists); onnxruntime runs it on its
CPU provider with THREADS intra-op threads and one inter-op thread, the budget of the others.
"""
from __future__ import annotations

import importlib

import numpy as np

from .threads import THREADS


def onnx_unavailable() -> str | None:
    """Why the onnxruntime column cannot be measured, or None when it can."""
    for module, why in (("dslc.runtime.onnx_export", "dslc.runtime.onnx_export is not in this checkout"),
                        ("onnx", "the onnx package is not installed (pip install onnx)"),
                        ("onnxruntime", "the onnxruntime package is not installed (pip install onnxruntime)")):
        try:
            importlib.import_module(module)
        except ImportError:
            return why
    return None


class OnnxRunner:
    framework = "onnxruntime"

    def __init__(self, dslc_runner):
        import onnxruntime as ort

        from dslc.runtime.onnx_export import to_onnx

        model = dslc_runner.model
        proto = to_onnx(model.net, dict(model.params))
        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        # onnxruntime's pool threads spin after each run by default, taking the cores from the
        # framework timed next in this process: with it on, dslc's LSTM inference measured 401
        # samples/s between onnxruntime's runs against 616 with it off (824 with no other
        # framework in the process), while onnxruntime's own figure moved by ~10%
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.feeds = {dslc_runner.x_name: dslc_runner.x}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def infer_step(self) -> None:
        self.session.run(None, self.feeds)

    def max_difference(self, outputs: dict) -> float | None:
        """The largest absolute difference from dslc's outputs (by name) on the same batch: the
        export carried the weights over when this is at rounding level."""
        got = dict(zip(self.output_names, self.session.run(None, self.feeds)))
        shared = [name for name in self.output_names if name in outputs]
        if not shared:
            return None
        return max(float(np.max(np.abs(got[n] - outputs[n]))) for n in shared)
