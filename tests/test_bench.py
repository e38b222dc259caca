"""The benchmark (bench/): both versions of each network are the same architecture, and the
command runs end to end on its smallest setting. Nothing here looks at a timing."""
import math
import os
import subprocess
import sys
from collections import Counter

import pytest

from bench import torch_models
from bench.report import COLUMNS
from bench.suite import MODELS
from dslc.compiler import compile_file

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dslc_shapes(name):
    """(trainable parameter shapes, buffer shapes) of the .net file, as multisets."""
    net, _ = compile_file(MODELS[name].net_file, {})
    params, buffers = Counter(), Counter()
    for node in net.graph.nodes:
        for p in net.node(node).params.values():
            (params if p.trainable else buffers)[tuple(p.shape)] += 1
    return params, buffers


@pytest.mark.parametrize("name", list(MODELS))
def test_dslc_and_torch_networks_have_the_same_parameters(name):
    module = torch_models.TORCH_MODELS[name]()
    params, buffers = _dslc_shapes(name)
    # same count, and tensor for tensor the same shapes (dslc keeps torch's layouts)
    assert sum(c * math.prod(s) for s, c in params.items()) == torch_models.parameter_count(module)
    assert params == Counter(tuple(p.shape) for p in module.parameters())
    assert buffers == Counter(tuple(b.shape) for n, b in module.named_buffers() if not n.endswith("num_batches_tracked"))


def _run_bench(*args, timeout):
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_quick_bench_writes_a_complete_table(tmp_path):
    out = tmp_path / "results.md"
    done = _run_bench("--quick", "--out", str(out), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "python -m bench --quick --out" in text
    assert "| " + " | ".join(COLUMNS) + " |" in text
    rows = [line for line in text.splitlines() if line.startswith("| lenet5_relu |")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == len(COLUMNS)
    assert "-" not in cells, f"a figure is missing: {rows[0]}"
    assert cells[2] == "61,706"
    assert rows[0] in done.stdout


def test_unknown_model_is_a_usage_error():
    done = _run_bench("--models", "lenet5_relu,resnet18_cifr", timeout=120)
    assert done.returncode == 2
    assert "unknown model 'resnet18_cifr'; did you mean resnet18_cifar?" in done.stderr
