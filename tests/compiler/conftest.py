"""Fixtures shared by the compiler tests."""
import pytest

from dslc.cli import main


@pytest.fixture
def dslc(tmp_path, monkeypatch, capsys):
    """Runs `dslc compile prog.net FLAGS` on a program written to a fresh directory, which is
    the working directory, so locations read `prog.net:line:col`. Returns (exit code, stdout, stderr)
    and fails on any traceback or internal error."""
    monkeypatch.chdir(tmp_path)

    def run(program, *flags, name="prog.net"):
        data = program if isinstance(program, bytes) else program.encode("utf-8")
        (tmp_path / name).write_bytes(data)
        rc = main(["compile", name, *flags])
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err and "internal error" not in out + err, err
        return rc, out, err
    return run
