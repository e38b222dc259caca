"""The README's zoo table states what `dslc compile` reports: each row's parameter count to the
unit and its MACs per sample as rounded in the table (G or M, two decimals)."""
import re
from pathlib import Path

import pytest

from dslc.compiler import compile_file
from dslc.summary import totals

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| `(\w+)\.net`[^|]* \| ([\d,]+) \| ([\d.]+) ([GM]) \|$")
ROWS = [m.groups() for line in (ROOT / "README.md").read_text().splitlines() if (m := ROW.match(line))]


def test_the_table_is_found():
    assert len(ROWS) >= 10


@pytest.mark.parametrize("model, params, macs, unit", ROWS, ids=[r[0] for r in ROWS])
def test_row_matches_the_compiler(model, params, macs, unit):
    net, _ = compile_file(str(ROOT / "models" / f"{model}.net"))
    t = totals(net)
    assert t["trainable_parameters"] == int(params.replace(",", ""))
    scale = 1e9 if unit == "G" else 1e6
    assert f"{t['macs'] / scale:.2f}" == macs
