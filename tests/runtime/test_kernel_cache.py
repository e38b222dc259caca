"""The kernel cache is keyed by the contents of every kernel source (runtime/jit.py): a kernel
compiled before an edit to any of them, even to a file other than its own, is compiled again."""
import importlib
import json
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest
from numba.core.registry import CPUDispatcher

import dslc.runtime.cpu
from dslc.runtime import jit

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_digest_follows_every_file_of_a_folder(tmp_path):
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not a source")
    first = jit.sources_digest([tmp_path])
    assert jit.sources_digest([tmp_path]) == first
    (tmp_path / "notes.txt").write_text("still not a source")
    assert jit.sources_digest([tmp_path]) == first
    (tmp_path / "b.py").write_text("y = 3\n")
    assert jit.sources_digest([tmp_path]) != first


def test_every_cpu_kernel_uses_the_content_keyed_cache():
    """A kernel jitted with numba's own cache=True would be keyed by its file alone."""
    dispatchers = []
    for info in pkgutil.iter_modules(dslc.runtime.cpu.__path__):
        module = importlib.import_module(f"dslc.runtime.cpu.{info.name}")
        dispatchers += [(f"{info.name}.{name}", value) for name, value in vars(module).items()
                        if isinstance(value, CPUDispatcher) and value.py_func.__module__ == module.__name__]
    assert len(dispatchers) > 50
    plain = [name for name, d in dispatchers if not isinstance(d._cache, jit.KernelCache)]
    assert plain == []


SCRIPT = r'''
import json, sys
import numpy as np
from dslc.runtime import jit
if sys.argv[1] != "same":
    jit.KERNEL_SOURCES_DIGEST = "as if a kernel source had changed"
from dslc.runtime.cpu.arrays import scale_shift
x = np.ones(3, np.float32)
scale_shift(x, x, np.float32(2), np.float32(1), True)
print(json.dumps({"hits": sum(scale_shift.stats.cache_hits.values()),
                  "misses": sum(scale_shift.stats.cache_misses.values())}))
'''


@pytest.mark.slow
def test_a_changed_digest_compiles_again(tmp_path):
    def run(mode):
        env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
        done = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=600, check=True)
        return json.loads(done.stdout)

    assert run("same") == {"hits": 0, "misses": 1}        # an empty cache
    assert run("same") == {"hits": 1, "misses": 0}
    assert run("changed") == {"hits": 0, "misses": 1}
    assert run("changed") == {"hits": 1, "misses": 0}
