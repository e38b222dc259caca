"""A GAN through the installed `dslc` command: models/dcgan.net's two objectives alternate, and
the epoch line and the metrics file report each loss."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DSLC = str(Path(sys.executable).with_name("dslc"))


@pytest.mark.slow
def test_dcgan_alternates_and_reports_both_losses(tmp_path):
    metrics = tmp_path / "m.jsonl"
    r = subprocess.run([DSLC, "run", str(ROOT / "models" / "dcgan.net"), "--data", "digits", "--epochs", "2",
                        "--limit", "240", "--quiet", "--checkpoint", str(tmp_path / "ck"), "--metrics", str(metrics)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = re.findall(r"train loss [0-9.]+ \(d ([0-9.]+), g ([0-9.]+)\)", r.stdout + r.stderr)
    assert len(lines) == 2, r.stdout + r.stderr
    epochs = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [sorted(e["train_terms"]) for e in epochs] == [["d", "g"], ["d", "g"]]
    assert (tmp_path / "ck" / "last.ckpt").exists()
