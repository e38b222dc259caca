"""The execution plan: shared storage never aliases a live tensor, fan-out gradients add up,
fused dense + relu is exact, and kernels take both sides of their serial/parallel thresholds."""
import numpy as np
import pytest

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.runtime import jit
from dslc.runtime.devices import get_device
from dslc.runtime.kernel_api import Context, NodeSpec, kernel_class
from dslc.runtime.model import Model
from dslc.runtime.plan import Plan

from .torch_reference import run_torch

# Fan-out everywhere: `trunk` feeds a residual add, a concat and a dense head; add(h, h) takes
# one tensor twice; relu after add may run in place; flatten is a view; dense -> relu fuses;
# batchnorm and dropout keep what their backward needs in workspaces.
FAN_OUT = """
network fan_out
input image: [3, 6, 6]
input label: int
trunk = image -> stem: conv(4, 3x3, pad = 1) -> bn: batchnorm -> relu
mixed = add(trunk, trunk) -> relu
both = concat(trunk, mixed) -> conv(4, 1x1) -> relu
wide = add(both, trunk)
logits = wide -> flatten -> fc1: dense(12) -> relu -> dropout(0.25) -> fc2: dense(8) -> relu -> head: dense(5)
aux = trunk -> avgpool(global) -> aux: dense(5)
loss cross_entropy(logits, label) + 0.5 * cross_entropy(aux, label)
"""


def _compiled(source=FAN_OUT):
    net, _ = compile_source(Source("fan_out.net", source))
    return net


def _feeds(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch, 3, 6, 6)).astype(np.float32),
            "label": rng.integers(0, 5, batch).astype(np.int64)}


def _run(model, reuse_memory, feeds, training=True, steps=2):
    """Loss, outputs and gradients of `steps` forward/backward passes through a fresh plan."""
    plan = Plan(model.net, model._dev, model.device, len(feeds["label"]), {}, training,
                set(model.trainable_names()) if training else None, reuse_memory=reuse_memory)
    results = []
    for step in range(steps):
        plan.set_inputs(feeds)
        plan.forward(Context(training=training, rng=np.random.default_rng(step)))
        if training:
            plan.backward(Context(training=training, rng=np.random.default_rng(step)))
        results.append((float(plan.loss_value()),
                        {o: plan.out[o].copy() for o in model.net.outputs},
                        {k: v.copy() for k, v in plan.param_grads.items()}))
    return plan, results


@pytest.mark.parametrize("training", [True, False])
def test_shared_storage_gives_exactly_what_separate_buffers_give(training):
    model = Model(_compiled(), seed=3)
    feeds = _feeds()
    shared, with_reuse = _run(model, True, feeds, training)
    separate, without = _run(model, False, feeds, training)
    assert shared.bytes < separate.bytes
    for (loss_a, outs_a, grads_a), (loss_b, outs_b, grads_b) in zip(with_reuse, without):
        assert loss_a == loss_b
        for k in outs_b:
            np.testing.assert_array_equal(outs_a[k], outs_b[k])
        assert grads_a.keys() == grads_b.keys()
        for k in grads_b:
            np.testing.assert_array_equal(grads_a[k], grads_b[k], err_msg=k)


def test_fan_out_gradients_match_torch():
    # dropout draws differ between the two frameworks: compare with it at rate 0
    net = _compiled(FAN_OUT.replace("dropout(0.25)", "dropout(0.0)"))
    model = Model(net, seed=5)
    feeds = _feeds(batch=3, seed=1)
    before = {k: v.copy() for k, v in model.params.items()}
    out = model.forward(training=True, **feeds)
    grads = model.backward()
    ref_loss, _, ref_grads = run_torch(net, before, feeds)
    assert out["loss"] == pytest.approx(ref_loss, rel=1e-4)
    assert set(grads) == {k for k in ref_grads if not k.endswith(("running_mean", "running_var"))}
    for k, g in grads.items():
        np.testing.assert_allclose(g, ref_grads[k], rtol=2e-3, atol=2e-4, err_msg=k)


def test_storage_is_shared_viewed_and_written_in_place():
    model = Model(_compiled(), seed=0)
    plan = Plan(model.net, model._dev, model.device, 4, {}, True, set(model.trainable_names()))
    g = model.net.graph
    by_op = {}
    for n in plan.schedule:
        by_op.setdefault(g.nodes[n]["node"].op, []).append(n)
    flatten = by_op["flatten"][0]
    assert np.shares_memory(plan.out[flatten], plan.out[g.nodes[flatten]["node"].inputs[0]])
    # relu after add(trunk, trunk): add's backward reads nothing, so relu overwrites its output
    add_relu = [n for n in by_op["relu"] if g.nodes[g.nodes[n]["node"].inputs[0]]["node"].op == "add"]
    assert add_relu and all(np.shares_memory(plan.out[n], plan.out[g.nodes[n]["node"].inputs[0]]) for n in add_relu)
    # fc1 -> relu is one step; the pre-activation is not stored
    fused = {s.node: s.absorbed for s in plan.steps if s.absorbed}
    assert "fc1" in fused and "fc2" in fused and "head" not in fused


def test_scratch_workspaces_are_shared_across_nodes(monkeypatch):
    """A conv's scratch (its columns or padded images): one call's worth of storage serves
    every conv, forward and backward; declared as kept instead, each conv holds its own from
    forward to backward."""
    import dslc.runtime.cpu.conv
    model = Model(_compiled(DEEP_CHAIN), seed=0)

    def plan():
        return Plan(model.net, model._dev, model.device, 16, {}, True, set(model.trainable_names()))
    shared = plan()
    convs = [s.node for s in shared.steps if model.net.node(s.node).op == "conv"]
    key = next(k for k, a in shared.ws[convs[0]].items() if a.size and k in dslc.runtime.cpu.conv.Conv.scratch_workspace)
    buffers = [shared.ws[n][key] for n in convs] + [shared.ws_backward[n][key] for n in convs]
    assert all(np.shares_memory(buffers[0], b) for b in buffers[1:])
    monkeypatch.setattr(dslc.runtime.cpu.conv.Conv, "scratch_workspace", ())
    assert shared.bytes < plan().bytes


def test_divergence_is_found_though_early_outputs_were_overwritten():
    model = Model(_compiled(), seed=2)
    feeds = _feeds()
    model.set_param("head.weight", np.full_like(model.params["head.weight"], np.inf))
    model.forward(training=True, **feeds)
    assert model._last.first_nonfinite() == "head"


# Eight conv -> batchnorm -> relu layers of one size: an inference plan that releases each
# activation after its reader holds a few of them at a time, however deep the chain is.
DEEP_CHAIN = """
network chain
input image: [8, 8, 8]
input label: int
logits = image -> (conv(8, 3x3, pad = 1, bias = false) -> batchnorm -> relu) * 8
    -> avgpool(global) -> flatten -> dense(5)
loss cross_entropy(logits, label)
"""


def test_inference_plan_releases_activations():
    model = Model(_compiled(DEEP_CHAIN), seed=0)
    inference = Plan(model.net, model._dev, model.device, 64, {}, False, None, with_loss=False)
    separate = Plan(model.net, model._dev, model.device, 64, {}, False, None, with_loss=False, reuse_memory=False)
    assert inference.bytes < separate.bytes / 4


@pytest.mark.parametrize("source,batch", [(DEEP_CHAIN, 16), (FAN_OUT, 4)], ids=["deep-chain", "fan-out"])
def test_inference_folds_batchnorm_into_conv(source, batch, monkeypatch):
    """In inference plans conv -> batchnorm -> relu is one call (the conv's epilogue scales,
    shifts and clamps), and gives what the three ops give one by one, once training has moved
    the running statistics and the batchnorm's own parameters are not the identity."""
    import dslc.runtime.cpu.conv
    model = Model(_compiled(source), seed=0)
    rng = np.random.default_rng(4)
    shape = (batch, *model.net.node("image").type.shape[1:])
    feeds = {"image": rng.standard_normal(shape).astype(np.float32),
             "label": rng.integers(0, 5, batch).astype(np.int64)}
    for _ in range(3):      # momentum 0.1: the running statistics move off zeros and ones
        model.forward(training=True, **feeds)
    g = model.net.graph
    for n in g.nodes:
        if g.nodes[n]["node"].op == "batchnorm":
            c = model.params[f"{n}.weight"].shape
            model.set_param(f"{n}.weight", rng.uniform(0.5, 1.5, c).astype(np.float32))
            model.set_param(f"{n}.bias", rng.standard_normal(c).astype(np.float32))

    def outputs(plan):
        plan.set_inputs({"image": feeds["image"]})
        plan.forward(Context(training=False))
        return {o: plan.out[o].copy() for o in model.net.outputs}

    def folded(plan):
        return [s.absorbed for s in plan.steps if any(g.nodes[a]["node"].op == "batchnorm" for a in s.absorbed)]

    fused = Plan(model.net, model._dev, model.device, batch, {}, False, None, with_loss=False)
    convs_before_batchnorm = [n for n in g.nodes if g.nodes[n]["node"].op == "conv"
                              and any(g.nodes[c]["node"].op == "batchnorm" for c in g.successors(n))]
    assert len(folded(fused)) == len(convs_before_batchnorm) > 0
    assert all(g.nodes[chain[-1]]["node"].op == "relu" for chain in folded(fused))
    training = Plan(model.net, model._dev, model.device, batch, {}, True, set(model.trainable_names()))
    assert not folded(training)             # training normalises with batch statistics
    monkeypatch.setattr(dslc.runtime.cpu.conv.Conv, "fuse_batchnorm", lambda self, attrs: False)
    separate = Plan(model.net, model._dev, model.device, batch, {}, False, None, with_loss=False)
    assert not folded(separate)
    expected = outputs(separate)
    for name, value in outputs(fused).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-5, err_msg=name)


# DenseNet's pre-activation: batchnorm -> relu before a 1x1 conv (absorbed in inference plans),
# a batchnorm alone before one (absorbed too), and three that stay apart: before a 3x3 conv,
# before a 1x1 conv whose input another layer reads too, and one reading a network output.
PRE_ACTIVATION = """
network pre_activation
input image: [3, 6, 6]
input label: int
stem = image -> stem: conv(8, 3x3, pad = 1, bias = false)
a = stem -> n1: batchnorm -> relu -> c1: conv(16, 1x1, bias = false) -> n2: batchnorm -> relu
    -> c2: conv(4, 3x3, pad = 1, bias = false)
b = concat(stem, a) -> n3: batchnorm -> c3: conv(6, 1x1)
shared = b -> n4: batchnorm -> relu
c = shared -> c4: conv(6, 1x1)
d = add(c, shared)
logits = d -> avgpool(global) -> flatten -> dense(5)
loss cross_entropy(logits, label)
"""


def test_inference_folds_batchnorm_into_the_pointwise_conv_after_it(monkeypatch):
    """In inference plans a 1x1 conv absorbs the batchnorm (-> relu) call that feeds it alone:
    it normalises each sample into its columns, exactly as batchnorm's kernel would (the
    outputs equal the separate calls' bit for bit); training plans, 3x3 convs, a batchnorm
    whose output another layer reads, and convs that share each sample between the threads
    keep the calls apart."""
    import dslc.runtime.cpu.conv
    model = Model(_compiled(PRE_ACTIVATION), seed=0)
    rng = np.random.default_rng(5)
    feeds = {"image": rng.standard_normal((8, 3, 6, 6)).astype(np.float32),
             "label": rng.integers(0, 5, 8).astype(np.int64)}
    for _ in range(3):      # the running statistics move off zeros and ones
        model.forward(training=True, **feeds)
    for n in ("n1", "n3", "n4"):
        c = model.params[f"{n}.weight"].shape
        model.set_param(f"{n}.weight", rng.uniform(0.5, 1.5, c).astype(np.float32))
        model.set_param(f"{n}.bias", rng.standard_normal(c).astype(np.float32))

    def plan(batch, training=False):
        return Plan(model.net, model._dev, model.device, batch, {}, training,
                    set(model.trainable_names()) if training else None, with_loss=training)

    def absorbed(p):
        return {s.node: (s.absorbed_input, s.absorbed_input_chain) for s in p.steps if s.absorbed_input}

    def outputs(p, batch):
        p.set_inputs({"image": feeds["image"][:batch]})
        p.forward(Context(training=False))
        return {o: p.out[o].copy() for o in model.net.outputs}

    fused = plan(8)
    (relu,) = model.net.graph.successors("n1")
    assert absorbed(fused) == {"c1": ("n1", (relu,)), "c3": ("n3", ())}
    c1 = next(s for s in fused.steps if s.node == "c1")
    assert c1.inputs == ["stem"]                # n1's input
    assert c1.kernel.describe() == "batchnorm +relu -> conv im2col +batchnorm +relu"
    assert not absorbed(plan(8, training=True))
    pre_activation = [("batchnorm", {}), ("relu", {})]
    fresh = type(c1.kernel)(c1.kernel.spec)
    assert fresh.fuse_input_chain(pre_activation) and not fresh.fuse_input_chain(pre_activation)   # once
    sharing = type(c1.kernel)(c1.kernel.spec)
    sharing.split_samples = True                # a batch smaller than the threads: no such path
    assert not sharing.fuse_input_chain(pre_activation)
    c2 = next(s for s in fused.steps if s.node == "c2")
    assert not type(c2.kernel)(c2.kernel.spec).fuse_input_chain(pre_activation)      # 3x3
    monkeypatch.setattr(dslc.runtime.cpu.conv.Conv, "fuse_input_chain", lambda self, nodes: False)
    separate = plan(8)
    assert not absorbed(separate)
    expected = outputs(separate, 8)
    for name, value in outputs(fused, 8).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)


# A language model whose LSTM reads an embed (absorbed in inference plans), and a GRU that
# reads an embed whose output a second head reads too (never absorbed: it must be stored).
EMBEDDED = """
network embedded(vocab = 9)
input text: int[T]
input next: int[T]
logits = text -> embed(vocab, 6) -> lstm(7, layers = 2) -> dense(vocab)
shared = text -> words: embed(vocab, 5)
both = shared -> gru(5) -> add(shared) -> dense(vocab)
loss cross_entropy(logits, next) + cross_entropy(both, next)
"""


def test_inference_folds_embed_into_recurrent_layer(monkeypatch):
    """In inference plans a recurrent layer absorbs the embed that feeds it alone (it gathers
    its input projection from a table, see recurrent.py's fuse_input) and reads the ids
    itself; training plans keep the embed; outputs are what the separate calls give."""
    import dslc.runtime.cpu.recurrent
    model = Model(_compiled(EMBEDDED), seed=0)
    g = model.net.graph
    batch, symbols = 4, {"T": 6}
    ids = np.random.default_rng(6).integers(0, 9, (batch, 6)).astype(np.int64)

    def outputs(plan):
        plan.set_inputs({"text": ids})
        plan.forward(Context(training=False))
        return {o: plan.out[o].copy() for o in model.net.outputs}

    def absorbed(plan):
        return {s.node: s.absorbed_input for s in plan.steps if s.absorbed_input}

    fused = Plan(model.net, model._dev, model.device, batch, symbols, False, None, with_loss=False)
    (lstm, embed), = absorbed(fused).items()
    assert g.nodes[lstm]["node"].op == "lstm" and g.nodes[embed]["node"].op == "embed"
    assert fused.step_of[lstm].inputs == ["text"] and embed not in fused.step_of
    training = Plan(model.net, model._dev, model.device, batch, symbols, True, set(model.trainable_names()))
    assert not absorbed(training)
    monkeypatch.setattr(dslc.runtime.cpu.recurrent._RecurrentKernel, "fuse_input", lambda self, op, attrs: False)
    separate = Plan(model.net, model._dev, model.device, batch, symbols, False, None, with_loss=False)
    assert not absorbed(separate)
    expected = outputs(separate)
    for name, value in outputs(fused).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


# An inception module on a 16x16 grid (one sample's GEMM has 256 columns, the pointwise path
# that GEMMs straight from the image): its three 1x1 convs read one tensor, with and without a
# bias and a relu; the fourth branch's 1x1 conv reads the max-pool's output and stays alone.
INCEPTION = """
network inception
input image: [6, 16, 16]
input label: int
logits = image -> stem: conv(8, 3x3, pad = 1) -> relu
  -> concat {
      a: conv(4, 1x1) -> relu
    | b: conv(3, 1x1) -> relu -> conv(5, 3x3, pad = 1) -> relu
    | c: conv(2, 1x1, bias = false) -> conv(3, 5x5, pad = 2) -> relu
    | maxpool(3x3, stride = 1, pad = 1) -> d: conv(2, 1x1) -> relu
  }
  -> avgpool(global) -> flatten -> fc: dense(5)
loss cross_entropy(logits, label)
"""


def _inception_feeds(batch=4, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.standard_normal((batch, 6, 16, 16)).astype(np.float32),
            "label": rng.integers(0, 5, batch).astype(np.int64)}


def _sibling_groups(plan):
    return {s.node: [f.node for f in s.followers] for s in plan.steps if s.followers}


@pytest.mark.parametrize("workers", ["one-worker", "all-workers", "batch-of-one"])
@pytest.mark.parametrize("frozen", [(), ("branch2.b.weight",)], ids=["all-trained", "one-weight-frozen"])
def test_sibling_pointwise_convs_share_one_gemm(workers, frozen, monkeypatch):
    """The three 1x1 convs that read the stem's output run as one call of the first (the
    plan's _fuse_siblings), in training and inference, and give what three calls give: the
    same outputs, loss and gradients, a frozen member's weight left without one. At batch 1
    the forward's workers share the sample's blocks of columns (made short here, with a short
    last block)."""
    import dslc.runtime.cpu.conv
    batch = 1 if workers == "batch-of-one" else 4
    if workers != "one-worker":
        monkeypatch.setattr(dslc.runtime.cpu.conv, "parallel_gemm", lambda flops: True)
    if workers == "batch-of-one":
        monkeypatch.setattr(dslc.runtime.cpu.conv, "SIBLING_COLUMNS", 96)
    model = Model(_compiled(INCEPTION), seed=1)
    feeds = _inception_feeds(batch)
    trainable = set(model.trainable_names()) - set(frozen)

    def run(training):
        plan = Plan(model.net, model._dev, model.device, batch, {}, training, trainable if training else None)
        plan.set_inputs(feeds)
        plan.forward(Context(training=training))
        if training:
            plan.backward(Context(training=training))
        return plan, (float(plan.loss_value()), {o: plan.out[o].copy() for o in model.net.outputs},
                      {k: v.copy() for k, v in plan.param_grads.items()})

    results = {}
    for training in (True, False):
        plan, results[training] = run(training)
        group = _sibling_groups(plan)
        assert group == {"branch1.a": ["branch2.b", "branch3.c"]}
    monkeypatch.setattr(dslc.runtime.cpu.conv.Conv, "sibling_key", lambda self: None)
    for training in (True, False):
        plan, (loss, outs, grads) = run(training)
        assert not _sibling_groups(plan)
        fused_loss, fused_outs, fused_grads = results[training]
        assert fused_loss == pytest.approx(loss, rel=1e-5)
        for k in outs:
            np.testing.assert_allclose(fused_outs[k], outs[k], rtol=1e-5, atol=1e-6, err_msg=k)
        assert fused_grads.keys() == grads.keys() and not set(frozen) & set(grads)
        for k in grads:
            np.testing.assert_allclose(fused_grads[k], grads[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_sibling_pointwise_convs_match_torch():
    net = _compiled(INCEPTION)
    model = Model(net, seed=2)
    feeds = _inception_feeds(batch=3, seed=1)
    before = {k: v.copy() for k, v in model.params.items()}
    out = model.forward(training=True, **feeds)
    assert _sibling_groups(model._last)
    grads = model.backward()
    ref_loss, _, ref_grads = run_torch(net, before, feeds)
    assert out["loss"] == pytest.approx(ref_loss, rel=1e-4)
    for k, g in grads.items():
        np.testing.assert_allclose(g, ref_grads[k], rtol=2e-3, atol=2e-4, err_msg=k)


# ---- serial / parallel thresholds ------------------------------------------------------------

def _elementwise_spec(op, shape, attrs=None):
    return NodeSpec(name=op, op=op, attrs=attrs or {}, in_shapes=(shape,), in_dtypes=("float32",), out_shape=shape)


@pytest.mark.parametrize("op,attrs", [("relu", {}), ("leaky_relu", {"slope": 0.1}), ("elu", {"alpha": 1.0}),
                                      ("sigmoid", {}), ("tanh", {})])
def test_elementwise_threshold_both_sides_agree(op, attrs):
    below = (jit.PARALLEL_MIN_ELEMENTS - 1,)
    at = (jit.PARALLEL_MIN_ELEMENTS,)
    assert not kernel_class("cpu", op)(_elementwise_spec(op, below, attrs)).parallel
    kernel = kernel_class("cpu", op)(_elementwise_spec(op, at, attrs))
    assert kernel.parallel
    rng = np.random.default_rng(0)
    x = rng.standard_normal(at).astype(np.float32)
    gout = rng.standard_normal(at).astype(np.float32)
    results = []
    for parallel in (False, True):
        kernel.parallel = parallel
        out, gx = np.empty_like(x), np.empty_like(x)
        kernel.forward(Context(), [x], {}, out, {})
        kernel.backward(Context(), [x], {}, out, gout, [gx], {}, {})
        results.append((out, gx))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])


def _dense(rows, features, units, relu):
    spec = NodeSpec(name="fc", op="dense", attrs={"units": units, "bias": True}, in_shapes=((rows, features),),
                    in_dtypes=("float32",), out_shape=(rows, units),
                    param_shapes={"weight": (units, features), "bias": (units,)})
    kernel = kernel_class("cpu", "dense")(spec)
    if relu:
        assert kernel.fuse_activation("relu", {})
    return kernel


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("rows,features,units", [(8, 12, 5), (64, 512, 300)])
def test_dense_serial_and_parallel_paths_match_numpy(rows, features, units, relu):
    kernel = _dense(rows, features, units, relu)
    big = 2 * rows * features * units >= jit.PARALLEL_MIN_FLOPS
    assert (kernel.forward_parts > 1) == (big and jit.parallel_gemm(2 * rows * features * units))
    assert kernel.parallel_backward == jit.parallel_gemm(4 * rows * features * units)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    params = {"weight": (rng.standard_normal((units, features)) / np.sqrt(features)).astype(np.float32),
              "bias": rng.standard_normal(units).astype(np.float32)}
    gout = rng.standard_normal((rows, units)).astype(np.float32)
    pre = x.astype(np.float64) @ params["weight"].T.astype(np.float64) + params["bias"]
    want = np.maximum(pre, 0) if relu else pre
    g = gout * (pre > 0) if relu else gout
    ws = {k: np.empty(s, np.float32) for k, (s, _) in kernel.workspace().items()}
    for forward_parts, parallel_backward in ((1, False), (2, True)):
        kernel.forward_parts, kernel.parallel_backward = forward_parts, parallel_backward
        out = np.empty((rows, units), np.float32)
        kernel.forward(Context(), [x], params, out, ws)
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
        gx = np.empty_like(x)
        gparams = {"weight": np.empty_like(params["weight"]), "bias": np.empty_like(params["bias"])}
        kernel.backward(Context(), [x], params, out, gout, [gx], gparams, ws)
        np.testing.assert_allclose(gx, g @ params["weight"].astype(np.float64), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(gparams["weight"], g.T @ x.astype(np.float64), rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(gparams["bias"], g.sum(axis=0), rtol=1e-4, atol=1e-3)


def test_cpu_plan_holds_blas_to_one_thread():
    from threadpoolctl import threadpool_info
    Plan(_compiled(), Model(_compiled())._dev, get_device("cpu"), 2, {}, False, None)
    assert all(p["num_threads"] == 1 for p in threadpool_info() if p["user_api"] == "blas")
