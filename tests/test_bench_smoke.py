"""`make bench` is not part of the test suite; this smoke run checks that its machinery works (issue #9)."""

import subprocess
import sys

import pandas as pd

from conftest import ROOT


def test_benchmark_smoke_run_writes_its_tables_and_figure(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/run.py", "--smoke", "--out", str(tmp_path),
                           "--figures", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = pd.read_csv(tmp_path / "round_time.csv")
    assert list(table.columns[:3]) == ["system", "clients_per_round", "seconds_per_round"]
    assert set(table.system) == {"fedlab", "limit", "limit_one_thread"}
    assert (table.seconds_per_round > 0).all()
    memory = pd.read_csv(tmp_path / "memory.csv")
    assert (memory.peak_rss_mb > 50).all()  # a Python process with TensorFlow is far above this
    workbench = pd.read_csv(tmp_path / "workbench.csv").set_index("measure")["value"]
    assert 0 < workbench["widget_latency_seconds_median"] < workbench["cold_start_seconds_median"]
    assert workbench["cold_start_seconds_median"] <= workbench["cold_start_seconds_max"]
    assert (tmp_path / "round_time.png").stat().st_size > 10_000
    assert "fedlab / limit" in proc.stdout
