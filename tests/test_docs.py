"""README.md and docs/*.md are executable: every fenced command and Python snippet runs here.

The blocks and how they are run and compared are in tools/regen_transcripts.py, which also
rewrites the ```console transcripts from what the code prints. Blocks that cannot run in a test
carry `<!-- not-run: reason -->` and are listed by test_blocks_that_do_not_run_say_why.
"""
import re
import shutil

import pytest

from tools import regen_transcripts as docs

BLOCKS = docs.all_blocks()
RUNNABLE = [b for b in BLOCKS if b.not_run is None and b.lang in ("console", "bash", "python")]
TRAINS = re.compile(r"\bdslc (run|eval)\b|\.fit\(")


def _param(block):
    slow = bool(TRAINS.search("\n".join(block.body)))
    return pytest.param(block, id=block.where, marks=[pytest.mark.slow] if slow else [])


def test_every_fence_is_of_a_known_kind():
    """Commands live only in console, bash or python blocks, so none escapes the tests below."""
    for b in BLOCKS:
        if b.lang in ("console", "bash", "python", "dslc"):
            continue
        assert not b.mentions_commands(), \
            f"{b.where}: a ```{b.lang} block holds a command; fence it as console or bash"


def test_there_are_runnable_blocks():
    kinds = {b.lang for b in RUNNABLE}
    assert {"console", "bash", "python"} <= kinds and len(RUNNABLE) >= 5


# The blocks that cannot run in a test, by their first command. A new one is a decision to
# review: add it here.
NOT_RUN = {
    "./setup.sh && .venv/bin/dslc run models/digits_cnn.net --data digits",   # installs
    '.venv/bin/python -m pytest -q -m "not slow"',                             # the suite itself
    ".venv/bin/python -m bench",                                               # the full benchmark
    "pip install '.[mpi]'",                                    # installs; tests/runtime/test_mpi.py runs mpiexec
    "mpiexec -f hosts.txt -n 8 .venv/bin/dslc run models/resnet_cifar.net --data cifar/ --batch 256 "
    "--checkpoint runs/r",                                                     # needs a cluster
    "import safetensors.torch, torchvision",                                   # torchvision: not a dependency
    "$ dslc predict models/resnet18.net --weights resnet18-torchvision.safetensors x.npy",   # that file
    # tests/test_transfer_recipe.py runs it on an image folder and weights file it generates
    "$ dslc run models/resnet18.net --data my_images/ --set classes=3 --weights resnet18-torchvision.safetensors "
    "--freeze-all-but fc --lr 0.01 --epochs 1 --batch 4 --checkpoint runs/transfer --quiet",
}


def test_blocks_that_do_not_run_say_why():
    skipped = [b for b in BLOCKS if b.not_run is not None]
    for b in skipped:
        assert len(b.not_run) > 10, f"{b.where}: say why the block cannot run"
    assert {docs.bash_commands(b)[0] for b in skipped} == NOT_RUN, [b.where for b in skipped]


def test_readme_starts_with_setup_then_the_digits_run_and_the_tests():
    first = docs.blocks("README.md")[0]
    assert first.body[0].split("#")[0].split() == \
        "./setup.sh && .venv/bin/dslc run models/digits_cnn.net --data digits".split()
    assert first.body[1].split("#")[0].split() == "./setup.sh && .venv/bin/python -m pytest -q".split()
    # The command after setup is the one the README's transcript runs (that block is run below).
    run = "dslc run models/digits_cnn.net --data digits"
    assert any(cmd.startswith(run) for b in BLOCKS if b.lang == "console" and b.not_run is None
               for cmd, _ in docs.console_steps(b))


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE if b.lang == "console"])
def test_console_transcript(block):
    if any(c.startswith("dslc viz") for c, _ in docs.console_steps(block)) and shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (setup.sh installs it); without it dslc viz writes .dot")
    for command, expected, code, actual in docs.run_console(block):
        assert "Traceback" not in "\n".join(actual)
        if not docs.matches(expected, actual):
            pytest.fail(f"{block.where}: `{command}` printed (exit {code}):\n" + "\n".join(actual)
                        + "\n\nexpected:\n" + "\n".join(expected)
                        + "\n\n(tools/regen_transcripts.py rewrites transcripts from the code)")


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE if b.lang == "bash"])
def test_bash_commands(block):
    with docs.workdir(block):
        for command in docs.bash_commands(block):
            code, actual = docs.run_dslc(command)
            assert code == 0, f"{block.where}: `{command}` exited {code}:\n" + "\n".join(actual)


@pytest.mark.parametrize("block", [_param(b) for b in RUNNABLE if b.lang == "python"])
def test_python_snippet(block, capsys):
    with docs.workdir(block):
        docs.run_python(block)


# The comparison itself

def test_ellipsis_stands_for_any_lines():
    assert docs.matches(["a", "...", "z"], ["a", "b", "c", "z"])
    assert docs.matches(["a", "...", "c", "...", "z"], ["a", "b", "c", "d", "z"])
    assert not docs.matches(["a", "...", "z"], ["a", "b"])
    assert not docs.matches(["a", "b"], ["a", "b", "c"])


def test_volatile_figures_are_masked():
    assert docs.matches(["epoch 1/8  loss 0.5  323 samples/s", "done: 8 epochs in 11.9 s"],
                        ["epoch 1/8  loss 0.5  9999 samples/s", "training step: compiled 54 kernel functions in "
                         "23.1 s; later runs load them from the cache", "done: 8 epochs in 2 s"])
    assert docs.matches(["epoch 1/8  val loss 0.3035"], ["epoch 1/8  val loss 0.3039"])
    assert not docs.matches(["epoch 1/8  loss 0.5"], ["epoch 1/8  loss 0.6"])
    assert not docs.matches(["epoch 1/8  loss 0.5"], ["epoch 2/8  loss 0.5"])


def test_elided_transcript_keeps_head_and_tail():
    assert docs.elide(["h", "...", "t1", "t2"], ["a", "b", "c", "d", "e"]) == ["a", "...", "d", "e"]
