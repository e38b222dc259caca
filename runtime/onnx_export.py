"""ONNX export: a checked network and its parameters -> an ONNX model for inference.

    model = to_onnx(net, params, opset=17)      # onnx.ModelProto, checked by onnx.checker
    export_onnx(net, params, "model.onnx")

The exported graph computes what `Model.forward` returns without labels (what `dslc predict`
prints): the network's outputs, under their tensor names, from the inputs they depend on.
Inference semantics throughout: batchnorm normalises with its running statistics, dropout,
drop_path and stop_gradient are identities, `sample` returns its mean, dropconnect_dense is a
plain dense layer, and losses (which need labels) are left out.

Names: graph inputs keep the network's input names, every node's output tensor is the node's
hierarchical name (`layer1.0.conv1`), so Netron shows the source's names; parameters keep
theirs (`layer1.0.conv1.weight`). The batch dimension is the symbolic `N`, and symbolic
sequence lengths keep their names.

Recurrent layers: ONNX's LSTM/GRU/RNN run one layer each, so a `layers = L` layer becomes L
ONNX nodes. dslc keeps torch's parameter layout (gate order LSTM i, f, g, o and GRU r, z, n,
separate input and hidden biases); ONNX wants LSTM i, o, f, c and GRU z, r, h, with both biases
in one [W_b, R_b] vector. The GRU's candidate applies the reset gate after the hidden product,
torch's form, which is ONNX's `linear_before_reset = 1`. ONNX's sequences are time major,
(T, D, N, H) out, so the batch-first tensors are transposed around each layer.

An op without an ONNX equivalent raises RuntimeUserError naming the op, the layer and its
source line.
"""
from __future__ import annotations

import numpy as np

from dslc.graph import Network, Node

from .errors import RuntimeUserError

DEFAULT_OPSET = 17
MIN_OPSET = 13          # Softmax on one axis, ReduceSum's axes as an input, Resize's inputs

# Stochastic or pass-through ops that are the identity at inference.
_IDENTITY = {"identity", "dropout", "drop_path", "stop_gradient", "detach"}
_UNARY = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "exp": "Exp", "log": "Log", "sqrt": "Sqrt",
          "abs": "Abs"}
_BINARY = {"mul": "Mul", "sub": "Sub", "div": "Div"}


def _onnx():
    try:
        import onnx
        from onnx import helper, numpy_helper
    except ImportError:
        raise RuntimeUserError("ONNX export needs the onnx package, which is not installed",
                               "pip install 'dslc[onnx]' (or pip install onnx)") from None
    return onnx, helper, numpy_helper


def check_opset(opset: int):
    onnx, _, _ = _onnx()
    top = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= top:
        raise RuntimeUserError(f"opset {opset} is not one this export writes",
                               f"give an opset from {MIN_OPSET} to {top} (default {DEFAULT_OPSET})")


def _unsupported(node: Node, why: str = "") -> RuntimeUserError:
    where = f"line {node.line}" if node.line else "an unknown line"
    return RuntimeUserError(f"`{node.op}` (layer `{node.name}`, {where}) has no ONNX equivalent"
                            + (f": {why}" if why else ""),
                            "export a network without it, or replace the layer with ops ONNX has "
                            "(docs/OPS.md lists what exports)")


class _Builder:
    def __init__(self, net: Network, params: dict, opset: int):
        self.onnx, self.helper, self.numpy_helper = _onnx()
        self.net, self.params, self.opset = net, params, opset
        self.nodes, self.inits, self._init_names, self._counter = [], [], set(), 0

    # ---- helpers -------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self._counter += 1
        return f"{base}/{self._counter}"

    def add(self, op: str, inputs: list, output: str | None = None, name: str | None = None, **attrs) -> str:
        output = output or self.fresh(name or op)
        self.nodes.append(self.helper.make_node(op, [str(i) for i in inputs], [output], name=self.fresh(name or op),
                                                **attrs))
        return output

    def const(self, name: str, value) -> str:
        """An initializer (once per name)."""
        if name not in self._init_names:
            self._init_names.add(name)
            # np.array, not ascontiguousarray, which would make a scalar (Clip's bounds) one-dimensional
            self.inits.append(self.numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def ints(self, values, base="shape") -> str:
        return self.const(self.fresh(base), np.asarray(values, np.int64))

    def scalar(self, value: float, base="const") -> str:
        return self.const(self.fresh(base), np.asarray(value, np.float32))

    def param(self, node: Node, key: str) -> str:
        name = node.param_name(key)
        return self.const(name, np.asarray(self.params[name], np.float32))

    def array(self, node: Node, key: str) -> np.ndarray:
        return np.asarray(self.params[node.param_name(key)], np.float32)

    def reduce(self, op: str, x: str, axes, keepdims: bool, output=None, name=None) -> str:
        """ReduceSum took its axes as an input from opset 13, the other reductions from 18."""
        if op == "ReduceSum" or self.opset >= 18:
            return self.add(op, [x, self.ints(list(axes), "axes")], output, name, keepdims=int(keepdims))
        return self.add(op, [x], output, name, axes=list(axes), keepdims=int(keepdims))

    def value_info(self, name: str, ttype):
        elem = self.onnx.TensorProto.INT64 if ttype.dtype == "int64" else self.onnx.TensorProto.FLOAT
        dims = [d if isinstance(d, int) else str(d) for d in ttype.shape]
        return self.helper.make_tensor_value_info(name, elem, dims)

    # ---- the graph -----------------------------------------------------------------------
    def build(self):
        net = self.net
        import networkx as nx
        needed = set()
        for o in net.outputs:
            needed |= nx.ancestors(net.graph, o) | {o}
        inputs = [i for i in net.inputs if i in needed]
        for node in net.nodes():
            if node.name not in needed or node.is_input:
                continue
            self.convert(node)
        outputs = []
        for o in net.outputs:
            name = net.tensor_name(o)
            if name != o:
                self.add("Identity", [o], name, name=name)
            outputs.append(self.value_info(name, net.node(o).type))
        graph = self.helper.make_graph(self.nodes, net.name, [self.value_info(i, net.node(i).type) for i in inputs],
                                       outputs, self.inits)
        model = self.helper.make_model(graph, opset_imports=[self.helper.make_opsetid("", self.opset)],
                                       producer_name="dslc", doc_string=f"{net.name} from {net.source_path}")
        # The oldest IR version the opset allows: runtimes read IR versions only up to the one they were
        # built for, and onnx's newest would shut out older onnxruntimes for no gain.
        model.ir_version = self.helper.find_min_ir_version_for(list(model.opset_import))
        self.onnx.checker.check_model(model, full_check=True)
        return model

    def convert(self, node: Node):
        x = list(node.inputs)
        if node.op in _IDENTITY:
            self.add("Identity", x[:1], node.name, node.name)
        elif node.op in _UNARY:
            self.add(_UNARY[node.op], x[:1], node.name, node.name)
        elif node.op in _BINARY:
            self.add(_BINARY[node.op], x[:2], node.name, node.name)
        else:
            convert = getattr(self, f"op_{node.op}", None)
            if convert is None:
                raise _unsupported(node)
            convert(node, x, node.name)

    # ---- ops -----------------------------------------------------------------------------
    def op_conv(self, n, x, out):
        a = n.attrs
        ins = [x[0], self.param(n, "weight")] + ([self.param(n, "bias")] if a.get("bias") else [])
        self.add("Conv", ins, out, n.name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                 pads=[*a["pad"], *a["pad"]], dilations=list(a.get("dilation", (1, 1))), group=int(a["groups"]))

    def op_deconv(self, n, x, out):
        a = n.attrs
        ins = [x[0], self.param(n, "weight")] + ([self.param(n, "bias")] if a.get("bias") else [])
        self.add("ConvTranspose", ins, out, n.name, kernel_shape=list(a["kernel"]), strides=list(a["stride"]),
                 pads=[*a["pad"], *a["pad"]], output_padding=list(a.get("output_pad", (0, 0))),
                 group=int(a.get("groups", 1)))

    def _pool_attrs(self, a):
        stride = a.get("stride") or a["kernel"]
        return dict(kernel_shape=list(a["kernel"]), strides=list(stride), pads=[*a["pad"], *a["pad"]],
                    ceil_mode=int(bool(a.get("ceil"))))

    def op_maxpool(self, n, x, out):
        self.add("MaxPool", [x[0]], out, n.name, **self._pool_attrs(n.attrs))

    def op_avgpool(self, n, x, out):
        self.add("AveragePool", [x[0]], out, n.name, count_include_pad=1, **self._pool_attrs(n.attrs))

    def op_global_avgpool(self, n, x, out):
        pooled = self.add("GlobalAveragePool", [x[0]], name=n.name)
        self.add("Flatten", [pooled], out, n.name, axis=1)

    def op_maxunpool(self, n, x, out):
        # ONNX's MaxUnpool refuses the sizes a ceil-mode pool undoes, so the values are scattered
        # by hand: pool the source again for its argmax indices (flat over the whole tensor) and
        # write y's values there into zeros of the source's shape.
        a = n.attrs
        pooled, indices = self.fresh(f"{n.name}/pooled"), self.fresh(f"{n.name}/indices")
        self.nodes.append(self.helper.make_node("MaxPool", [x[1]], [pooled, indices], name=self.fresh(n.name),
                                                **self._pool_attrs(a)))
        flat = self.ints([-1])
        shape = self.add("Shape", [x[1]], name=n.name)
        zeros = self.add("ConstantOfShape", [self.add("Shape", [self.add("Reshape", [x[1], flat], name=n.name)],
                                                      name=n.name)], name=n.name)
        scattered = self.add("ScatterElements", [zeros, self.add("Reshape", [indices, flat], name=n.name),
                                                 self.add("Reshape", [x[0], flat], name=n.name)], name=n.name, axis=0)
        self.add("Reshape", [scattered, shape], out, n.name)

    def op_unpool(self, n, x, out):
        # "Bed of nails": (N, C, H, 1, W, 1) padded with zeros to (N, C, H, sh, W, sw).
        _, c, h, w = self.net.node(x[0]).type.shape
        sh, sw = n.attrs["scale"]
        if not all(isinstance(d, int) for d in (c, h, w)):
            raise _unsupported(n, "a symbolic feature-map size")
        r = self.add("Reshape", [x[0], self.ints([-1, c, h, 1, w, 1])], name=n.name)
        p = self.add("Pad", [r, self.ints([0, 0, 0, 0, 0, 0, 0, 0, 0, sh - 1, 0, sw - 1], "pads")], name=n.name)
        self.add("Reshape", [p, self.ints([-1, c, h * sh, w * sw])], out, n.name)

    def op_upsample(self, n, x, out):
        sh, sw = n.attrs["scale"]
        scales = self.const(self.fresh("scales"), np.asarray([1, 1, sh, sw], np.float32))
        roi = self.const(self.fresh("roi"), np.zeros(0, np.float32))
        if n.attrs.get("mode", "nearest") == "nearest":
            self.add("Resize", [x[0], roi, scales], out, n.name, mode="nearest",
                     coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        else:
            self.add("Resize", [x[0], roi, scales], out, n.name, mode="linear",
                     coordinate_transformation_mode="pytorch_half_pixel")

    def op_dense(self, n, x, out):
        rank = self.net.node(x[0]).type.rank
        bias = n.attrs.get("bias", True)
        if rank == 3:       # per step: (N, T, F) @ W^T + b
            wt = self.const(f"{n.param_name('weight')}/transposed", self.array(n, "weight").T.copy())
            if bias:
                y = self.add("MatMul", [x[0], wt], name=n.name)
                self.add("Add", [y, self.param(n, "bias")], out, n.name)
            else:
                self.add("MatMul", [x[0], wt], out, n.name)
            return
        inp = x[0] if rank == 2 else self.add("Flatten", [x[0]], name=n.name, axis=1)
        ins = [inp, self.param(n, "weight")] + ([self.param(n, "bias")] if bias else [])
        self.add("Gemm", ins, out, n.name, transB=1)

    op_dropconnect_dense = op_dense

    def op_batchnorm(self, n, x, out):
        self.add("BatchNormalization", [x[0], self.param(n, "weight"), self.param(n, "bias"),
                                        self.param(n, "running_mean"), self.param(n, "running_var")],
                 out, n.name, epsilon=float(n.attrs.get("eps", 1e-5)))

    def op_lrn(self, n, x, out):
        a = n.attrs
        if int(a["size"]) % 2 == 0:
            raise _unsupported(n, "with an even size torch (and dslc) pad the channel window one more before "
                                  "than after, ONNX's LRN the other way round")
        self.add("LRN", [x[0]], out, n.name, size=int(a["size"]), alpha=float(a["alpha"]), beta=float(a["beta"]),
                 bias=float(a["k"]))

    def op_leaky_relu(self, n, x, out):
        self.add("LeakyRelu", [x[0]], out, n.name, alpha=float(n.attrs.get("slope", 0.01)))

    def op_elu(self, n, x, out):
        self.add("Elu", [x[0]], out, n.name, alpha=float(n.attrs.get("alpha", 1.0)))

    def op_prelu(self, n, x, out):
        rank = self.net.node(x[0]).type.rank
        w = self.array(n, "weight")
        slope = self.const(f"{n.param_name('weight')}/broadcast", w.reshape(w.shape + (1,) * (rank - 2)))
        self.add("PRelu", [x[0], slope], out, n.name)

    def op_softmax(self, n, x, out):
        self.add("Softmax", [x[0]], out, n.name, axis=int(n.attrs.get("axis", 1)))

    def op_maxout(self, n, x, out):
        shape = self.net.node(x[0]).type.shape
        k = int(n.attrs["pieces"])
        rest = list(shape[2:])
        if not all(isinstance(d, int) for d in shape[1:]):
            raise _unsupported(n, "a symbolic dimension after the batch")
        r = self.add("Reshape", [x[0], self.ints([-1, shape[1] // k, k, *rest])], name=n.name)
        self.reduce("ReduceMax", r, [2], False, out, n.name)

    def op_relu6(self, n, x, out):
        self.add("Clip", [x[0], self.scalar(0.0, "zero"), self.scalar(6.0, "six")], out, n.name)

    def op_clamp(self, n, x, out):
        lo, hi = n.attrs.get("min"), n.attrs.get("max")
        self.add("Clip", [x[0], "" if lo is None else self.scalar(lo, "min"), "" if hi is None else
                          self.scalar(hi, "max")], out, n.name)

    def op_scale(self, n, x, out):
        self.add("Mul", [x[0], self.scalar(n.attrs["factor"], "factor")], out, n.name)

    def op_shift(self, n, x, out):
        self.add("Add", [x[0], self.scalar(n.attrs["offset"], "offset")], out, n.name)

    def op_square(self, n, x, out):
        self.add("Mul", [x[0], x[0]], out, n.name)

    def op_add(self, n, x, out):
        self.add("Sum", x, out, n.name)

    def op_mean(self, n, x, out):
        self.add("Mean", x, out, n.name)

    def op_concat(self, n, x, out):
        self.add("Concat", x, out, n.name, axis=int(n.attrs.get("axis", 1)))

    def op_flatten(self, n, x, out):
        self.add("Flatten", [x[0]], out, n.name, axis=1)

    def op_reshape(self, n, x, out):
        self.add("Reshape", [x[0], self.ints([-1, *n.attrs["shape"]])], out, n.name)

    def op_reduce_sum(self, n, x, out):
        self.reduce("ReduceSum", x[0], n.attrs["axes"], n.attrs.get("keepdims", False), out, n.name)

    def op_reduce_mean(self, n, x, out):
        self.reduce("ReduceMean", x[0], n.attrs["axes"], n.attrs.get("keepdims", False), out, n.name)

    def op_slice(self, n, x, out):
        a = n.attrs
        end = a.get("end")
        end = np.iinfo(np.int64).max if end is None else end
        self.add("Slice", [x[0], self.ints([a.get("start", 0)], "starts"), self.ints([end], "ends"),
                           self.ints([a["axis"]], "axes"), self.ints([a.get("step", 1)], "steps")], out, n.name)

    def op_transpose(self, n, x, out):
        perm = list(range(self.net.node(x[0]).type.rank))
        i, j = int(n.attrs["axis0"]), int(n.attrs["axis1"])
        perm[i], perm[j] = perm[j], perm[i]
        self.add("Transpose", [x[0]], out, n.name, perm=perm)

    def op_permute(self, n, x, out):
        self.add("Transpose", [x[0]], out, n.name, perm=[0, *n.attrs["order"]])

    def op_sample(self, n, x, out):       # z = mu at inference
        self.add("Identity", [x[0]], out, n.name)

    def op_gaussian_like(self, n, x, out):
        self.add("RandomNormalLike", [x[0]], out, n.name, dtype=self.onnx.TensorProto.FLOAT)

    def op_embed(self, n, x, out):
        self.add("Gather", [self.param(n, "weight"), x[0]], out, n.name, axis=0)

    # ---- regions of interest: boxes [R, 5] = (batch index, x1, y1, x2, y2), torchvision's --------
    def op_roi_pool(self, n, x, out):
        oh, ow = n.attrs["output"]
        self.add("MaxRoiPool", x[:2], out, n.name, pooled_shape=[int(oh), int(ow)],
                 spatial_scale=float(n.attrs["scale"]))

    def op_roi_align(self, n, x, out):
        a = n.attrs
        if self.opset < 16 and a.get("aligned"):
            raise _unsupported(n, f"aligned = true needs RoiAlign's coordinate_transformation_mode, opset 16 "
                                  f"or later, not {self.opset}")
        boxes = self.add("Slice", [x[1], self.ints([1], "starts"), self.ints([5], "ends"), self.ints([1], "axes")],
                         name=n.name)
        index = self.add("Cast", [self.add("Gather", [x[1], self.const(self.fresh("column"),
                                                                        np.asarray(0, np.int64))],
                                           name=n.name, axis=1)], name=n.name, to=self.onnx.TensorProto.INT64)
        oh, ow = a["output"]
        attrs = dict(mode="avg", output_height=int(oh), output_width=int(ow), spatial_scale=float(a["scale"]),
                     sampling_ratio=max(int(a.get("sampling_ratio", -1)), 0))     # ONNX's 0 is adaptive
        if self.opset >= 16:
            attrs["coordinate_transformation_mode"] = "half_pixel" if a.get("aligned") else "output_half_pixel"
        self.add("RoiAlign", [x[0], boxes, index], out, n.name, **attrs)

    # ---- recurrent layers ----------------------------------------------------------------
    def op_rnn(self, n, x, out):
        self._recurrent(n, x, out, "RNN", 1, None)

    def op_lstm(self, n, x, out):
        # torch i, f, g, o -> ONNX i, o, f, c
        self._recurrent(n, x, out, "LSTM", 4, [0, 3, 1, 2])

    def op_gru(self, n, x, out):
        # torch r, z, n -> ONNX z, r, h
        self._recurrent(n, x, out, "GRU", 3, [1, 0, 2])

    def _recurrent(self, n, x, out, op, gates, order):
        a = n.attrs
        hidden, layers = int(a["hidden"]), int(a["layers"])
        dirs = 2 if a.get("bidirectional") else 1
        direction = "bidirectional" if dirs == 2 else "reverse" if a.get("reverse") else "forward"
        # Initial states: dslc's (N, layers * D, H) or (N, H) -> ONNX's (D, N, H) per layer.
        states = []
        for s in x[1:]:
            st = s
            if self.net.node(s).type.rank == 2:
                st = self.add("Unsqueeze", [s, self.ints([1], "axes")], name=n.name)
            states.append(self.add("Transpose", [st], name=n.name, perm=[1, 0, 2]))

        def state_of(k, layer):
            if k >= len(states):
                return ""
            return self.add("Slice", [states[k], self.ints([layer * dirs], "starts"),
                                      self.ints([(layer + 1) * dirs], "ends"), self.ints([0], "axes")], name=n.name)

        seq = self.add("Transpose", [x[0]], name=n.name, perm=[1, 0, 2])      # (T, N, F)
        for layer in range(layers):
            ws, rs, bs = [], [], []
            for d in range(dirs):
                sfx = f"l{layer}" + ("_reverse" if d else "")
                w, r = self.array(n, f"weight_ih_{sfx}"), self.array(n, f"weight_hh_{sfx}")
                bi, bh = self.array(n, f"bias_ih_{sfx}"), self.array(n, f"bias_hh_{sfx}")
                if order is not None:
                    def regroup(m):
                        return np.concatenate([m[g * hidden:(g + 1) * hidden] for g in order])
                    w, r, bi, bh = regroup(w), regroup(r), regroup(bi), regroup(bh)
                ws.append(w), rs.append(r), bs.append(np.concatenate([bi, bh]))
            base = f"{n.name}.l{layer}"
            ins = [seq, self.const(f"{base}/W", np.stack(ws)), self.const(f"{base}/R", np.stack(rs)),
                   self.const(f"{base}/B", np.stack(bs)), "", state_of(0, layer)]
            if op == "LSTM":
                ins.append(state_of(1, layer))
            while ins and ins[-1] == "":
                ins.pop()
            y, yh = self.fresh(f"{base}/Y"), self.fresh(f"{base}/Y_h")
            attrs = dict(hidden_size=hidden, direction=direction)
            if op == "GRU":
                attrs["linear_before_reset"] = 1
            outs = [y, yh] + ([self.fresh(f"{base}/Y_c")] if op == "LSTM" else [])
            self.nodes.append(self.helper.make_node(op, ins, outs, name=self.fresh(base), **attrs))
            # Y (T, D, N, H) -> (T, N, D * H): both directions concatenated on the features.
            t = self.add("Transpose", [y], name=n.name, perm=[0, 2, 1, 3])
            seq = self.add("Reshape", [t, self.ints([0, 0, dirs * hidden])], name=n.name)
        if a.get("sequence", True):
            self.add("Transpose", [seq], out, n.name, perm=[1, 0, 2])
            return
        # The last state computed: step T-1, or step 0 when the layer runs reversed.
        step = 0 if a.get("reverse") else -1
        last = self.add("Gather", [seq, self.const(self.fresh("step"), np.asarray(step, np.int64))], name=n.name,
                        axis=0)
        self.add("Identity", [last], out, n.name)


def to_onnx(net: Network, params: dict, opset: int = DEFAULT_OPSET):
    """The network with these parameters (name -> array, Model.params) as a checked onnx.ModelProto."""
    check_opset(opset)
    return _Builder(net, params, opset).build()


def export_onnx(net: Network, params: dict, path: str, opset: int = DEFAULT_OPSET):
    """Write the ONNX model to `path`; returns the ModelProto."""
    onnx, _, _ = _onnx()
    model = to_onnx(net, params, opset)
    onnx.save(model, path)
    return model
