"""`mean { a | b | ... }`: the branches' elementwise mean (FractalNet's join), the branch
construct beside `concat { }` and `sum { }` (docs/LANGUAGE.md, "Branches"). It elaborates to the
`mean` op over the branches, so `mean(a, b)` keeps working as a call; misuse is checked in the
golden style of test_diagnostics.py."""
import numpy as np
import pytest

from dslc.compiler import compile_file
from tests.compiler.helpers import golden

IMAGE = "network t\ninput image: [4, 8, 8]\n"


def compile_text(tmp_path, program):
    path = tmp_path / "prog.net"
    path.write_text(program)
    net, _ = compile_file(str(path), {})
    return net


def test_mean_block_joins_its_branches_with_the_mean_op(tmp_path):
    net = compile_text(tmp_path, IMAGE + """
y = image -> join: mean { conv(4, 3x3, pad = 1) | conv(4, 1x1) | identity }
output y
""")
    join = net.node("join.mean1")
    assert join.op == "mean"
    assert join.inputs == ("join.branch1.conv1", "join.branch2.conv1", "join.branch3.identity1")
    assert join.type.shape == ("N", 4, 8, 8)
    assert list(net.outputs) == ["join.mean1"]


def test_mean_call_still_reads_as_the_op(tmp_path):
    net = compile_text(tmp_path, IMAGE + "a = image -> relu\nb = mean(image, a)\nc = image -> mean(b)\noutput c\n")
    assert net.node("mean1").inputs == ("image", "relu1")
    assert net.node("mean2").inputs == ("image", "mean1")


def test_mean_block_computes_the_average(tmp_path):
    pytest.importorskip("numba")
    from dslc.runtime.model import Model
    net = compile_text(tmp_path, IMAGE + "y = image -> mean { scale(2.0) | scale(4.0) | identity }\noutput y\n")
    x = np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)
    y = Model(net, seed=0).forward(image=x)["y"]
    np.testing.assert_allclose(y, x * (2 + 4 + 1) / 3, rtol=1e-6)


def test_mean_block_with_one_branch(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> mean { conv(4, 1x1) }\n")
    assert rc == 1
    assert err == golden("""
        error: `mean { }` averages two or more branches, found one
          --> prog.net:3:14
           |
         3 | y = image -> mean { conv(4, 1x1) }
           |              ^^^^^^^^^^^^^^^^^^^^^ one branch
           = help: separate the branches with `|`, e.g. `mean { conv(c, 3x3, pad = 1) | identity }`

        1 error
        """)


def test_mean_block_branches_of_different_shapes(dslc):
    rc, out, err = dslc(IMAGE + "y = image -> mean { conv(4, 1x1) | conv(8, 1x1) }\n")
    assert rc == 1
    assert err == golden("""
        error: mean input 2 has shape [N, 8, 8, 8] but input 1 has [N, 4, 8, 8]: dimension 1 is 8 where 4 is expected
          --> prog.net:3:14
           |
         3 | y = image -> mean { conv(4, 1x1) | conv(8, 1x1) }
           |              ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ here
           = expected [N, 4, 8, 8], as input 1
           = found    [N, 8, 8, 8]
           = input `branch1.conv1` is [N, 4, 8, 8]
           = input `branch2.conv1` is [N, 8, 8, 8]
           = help: a projection (1x1 conv, or dense) makes the shapes agree

        1 error
        """)
