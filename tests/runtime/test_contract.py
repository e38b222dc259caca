"""The contracts between the op registry, the kernels, the devices and the plan.

Every op has a kernel on every device and a row in docs/OPS.md; the plan asks kernels and
devices through their base classes only (no probing, no device names); a plan that cannot fit
in memory is refused before it allocates; gradient clipping by value works on the GPU.
"""
import ast
import re
from pathlib import Path

import numpy as np
import pytest

from dslc.compiler import compile_source
from dslc.diagnostics import Source
from dslc.ops import OPS
from dslc.runtime import devices, kernel_api
from dslc.runtime.data import Dataset
from dslc.runtime.errors import RuntimeUserError
from dslc.runtime.model import Model
from dslc.runtime.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
CAPABILITIES = ("backward_reads_inputs", "backward_reads_out", "forward_in_place", "output_is_input_view",
                "scratch_workspace", "fuse_activation", "fuse_inference", "fuse_input", "sibling_key",
                "lead_siblings", "bind_siblings")


# ---- coverage: one op definition, one kernel per device, one docs row ----------------------------

@pytest.mark.parametrize("device", kernel_api.DEVICES)
def test_every_op_has_a_kernel_on_every_device(device):
    kernels = kernel_api.load_device(device)
    assert sorted(set(OPS) - set(kernels)) == [], f"ops without a {device} kernel"
    assert sorted(set(kernels) - set(OPS)) == [], f"{device} kernels for no registered op"
    for op, cls in kernels.items():
        assert issubclass(cls, kernel_api.Kernel), f"{device} kernel for {op} is no kernel_api.Kernel"


def _ops_table():
    """op name -> family, from the op table of docs/OPS.md (rows `| family | `op`, `op2` | ...`)."""
    rows = {}
    for line in (ROOT / "docs" / "OPS.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) > 2:
            for op in re.findall(r"`(\w+)`", cells[1]):
                rows[op] = cells[0]
    return rows


def test_every_op_has_a_row_in_the_ops_table_under_its_family():
    table = _ops_table()
    assert sorted(set(OPS) - set(table)) == [], "ops missing from docs/OPS.md's table"
    for name, op in OPS.items():
        assert table[name] == op.family, f"docs/OPS.md lists {name} under {table[name]}, the registry under {op.family}"


def test_kernel_families_are_the_registrys():
    assert set(kernel_api.FAMILIES) == {op.family for op in OPS.values()}
    for device in kernel_api.DEVICES:
        for family in kernel_api.FAMILIES:
            assert (ROOT / "runtime" / device / f"{family}.py").is_file()


def test_op_facts_live_on_the_op_definitions():
    assert {n for n, op in OPS.items() if op.classifies} == {"cross_entropy", "hinge"}
    assert all(op.is_loss for op in OPS.values() if op.classifies)
    assert {"relu", "leaky_relu"} <= {n for n, op in OPS.items() if op.relu_like}
    assert not OPS["sigmoid"].relu_like and not OPS["conv"].init_looks_through
    assert OPS["batchnorm"].init_looks_through and OPS["maxpool"].init_looks_through


# ---- the kernel and device contract ---------------------------------------------------------------

def test_every_kernel_capability_is_declared_on_the_base_class():
    for name in CAPABILITIES:
        assert hasattr(kernel_api.Kernel, name), name
    base = kernel_api.Kernel(None)
    assert base.backward_reads_inputs is True and base.backward_reads_out is True
    assert not base.forward_in_place and not base.output_is_input_view and base.scratch_workspace == ()
    assert not base.fuse_activation("relu", {}) and not base.fuse_inference("batchnorm", {})
    assert not base.fuse_input("embed", {}) and base.sibling_key() is None


def _calls(path, pred):
    tree = ast.parse(path.read_text())
    return [ast.unparse(n) for n in ast.walk(tree) if pred(n)]


@pytest.mark.parametrize("module", ["plan.py", "model.py", "train.py"])
def test_the_plan_model_and_trainer_neither_probe_kernels_nor_test_the_device(module):
    path = ROOT / "runtime" / module
    probes = _calls(path, lambda n: isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                    and n.func.id in ("getattr", "hasattr") and len(n.args) > 1
                    and isinstance(n.args[1], ast.Constant) and n.args[1].value in CAPABILITIES)
    assert probes == []
    device_tests = _calls(path, lambda n: isinstance(n, ast.Compare) and any(
        isinstance(side, ast.Attribute) and side.attr == "name" and "device" in ast.unparse(side.value)
        for side in [n.left, *n.comparators]))
    assert device_tests == []


# ---- plan-time memory estimate --------------------------------------------------------------------

BIG = """
network big_dense(width = 4096)
input x: [width]
input label: int
logits = x -> dense(width) -> relu -> dense(width) -> relu -> dense(10)
loss cross_entropy(logits, label)
"""


def _big_model():
    net, _ = compile_source(Source("big.net", BIG))
    return Model(net, device="cpu", seed=0)


def test_a_plan_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    model = _big_model()
    allocated = []
    real_empty = devices.CPU.empty
    monkeypatch.setattr(devices.CPU, "empty", lambda self, shape, dtype: allocated.append(shape)
                        or real_empty(self, shape, dtype))
    monkeypatch.setenv("DSLC_MEMORY_LIMIT", "4G")
    batch = 1 << 19              # activations of (batch, 4096) float32: 8 GiB each
    with pytest.raises(RuntimeUserError) as e:
        model.plan(batch, {}, training=True)
    message = f"{e.value} {e.value.hint}"
    assert "GiB" in message and "4.0 GiB" in message
    need = re.search(r"needs ~([\d.]+) GiB", str(e.value))
    assert need and 20 < float(need.group(1)) < 200, message
    assert f"use a smaller --batch ({batch} needs ~{need.group(1)} GiB)" in e.value.hint
    assert allocated == []


def test_the_estimate_is_what_the_plan_allocates(monkeypatch):
    model = _big_model()
    monkeypatch.setenv("DSLC_MEMORY_LIMIT", "1T")
    allocated = []
    real_empty = devices.CPU.empty
    monkeypatch.setattr(devices.CPU, "empty", lambda self, shape, dtype: allocated.append(
        int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize) or real_empty(self, shape, dtype))
    plan = model.plan(8, {}, training=True)
    assert 0 < plan.memory_needed
    # everything but the 4-byte loss seed
    assert sum(allocated) - 4 == plan.memory_needed


def test_a_plan_that_fits_is_made(monkeypatch):
    monkeypatch.setenv("DSLC_MEMORY_LIMIT", "1G")
    plan = _big_model().plan(2, {}, training=True)
    assert plan.memory_needed < 1 << 30


def test_parameters_that_cannot_fit_are_not_blamed_on_the_batch(monkeypatch):
    monkeypatch.setenv("DSLC_MEMORY_LIMIT", "64M")      # the two 4096 x 4096 weights' gradients: 128 MiB
    with pytest.raises(RuntimeUserError) as e:
        _big_model().plan(1, {}, training=True)
    assert "--batch" not in e.value.hint and "gradients alone" in e.value.hint
    assert _big_model().plan(1, {}, training=False).memory_needed < 64 << 20     # inference has none


def test_a_bad_memory_limit_is_a_user_error(monkeypatch):
    monkeypatch.setenv("DSLC_MEMORY_LIMIT", "lots")
    with pytest.raises(RuntimeUserError, match="DSLC_MEMORY_LIMIT"):
        _big_model().plan(2, {}, training=True)


def test_the_cpu_reports_available_memory():
    available = devices.CPU().available_memory()
    if Path("/proc/meminfo").exists():
        assert available > 0


# ---- gradient clipping on the device ----------------------------------------------------------------

CLIPPED = """
network clipped(classes = 3)
input x: [5]
input label: int
logits = x -> dense(4) -> tanh -> dense(classes)
loss cross_entropy(logits, label)
train { optimizer momentum(lr = 0.5) batch 4 epochs 1 clip_grad_value 0.01 clip_grad_norm 10 }
"""


@pytest.mark.slow
def test_clip_grad_value_trains_on_the_device_as_on_the_cpu():
    """`clip_grad_value` with --device cuda ran numpy's clip on device arrays (a TypeError in
    the simulator). Here a step on each device ends with the same parameters, and the clip
    bound is small enough to change them."""
    net, _ = compile_source(Source("clipped.net", CLIPPED))
    rng = np.random.default_rng(0)
    ds = Dataset(rng.standard_normal((4, 5)).astype(np.float32) * 10, rng.integers(0, 3, 4).astype(np.int64),
                 "toy", 3)
    params = {}
    for device in ("cpu", "cuda"):
        model = Model(net, device=device, seed=0)
        before = {k: v.copy() for k, v in model.params.items()}
        Trainer(model, TrainConfig.from_network(net), ds, None, progress=False, log=lambda s: None).fit()
        params[device] = model.params
        step = max(float(np.max(np.abs(params[device][k] - before[k]))) for k in before)
        assert step == pytest.approx(0.5 * 0.01, rel=1e-3), "every update is lr x the clip bound at most"
    for k, v in params["cpu"].items():
        np.testing.assert_allclose(params["cuda"][k], v, rtol=1e-5, atol=1e-6, err_msg=k)
