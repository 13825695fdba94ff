"""The examples run as documented."""

import runpy
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs(capsys):
    runpy.run_path(str(EXAMPLES / "quickstart.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "ragged layout gives the same advantages" in out
    assert "boundary fraction" in out


def test_trajectories_example_runs(capsys, tmp_path):
    import sys

    argv = sys.argv
    sys.argv = ["trajectories.py", str(tmp_path)]
    try:
        runpy.run_path(str(EXAMPLES / "trajectories.py"), run_name="__main__")
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "ok, 8 trajectories" in out
    assert "stored advantages equal compute_advantages" in out
    assert (tmp_path / "rollouts.parquet").exists()
