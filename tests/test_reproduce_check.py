"""``reproduce --check`` names what TensorFlow's arithmetic depends on here and whether it is what the committed
results were made with, so a difference on another machine is reported as one that can happen there."""

import shutil

import pytest

from fedlab.notebook import reproduce
from fedlab.notebook.reproduce import Numerics

# /proc/cpuinfo flags of three CPUs (the ones that matter here)
SAPPHIRE_RAPIDS = {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
                   "amx_tile", "amx_int8", "amx_bf16"}
SKYLAKE_SP = {"avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}  # no VNNI
EPYC_ZEN3 = {"avx", "avx2", "fma", "sse4_2"}  # no AVX-512, no VNNI


@pytest.mark.parametrize("flags, environ, expected", [
    (SAPPHIRE_RAPIDS, {}, Numerics(onednn=True, isa="avx512", threads=1)),
    (SKYLAKE_SP, {}, Numerics(onednn=False, isa=None, threads=1)),  # AVX-512 alone leaves oneDNN off
    (EPYC_ZEN3, {}, Numerics(onednn=False, isa=None, threads=1)),
    (EPYC_ZEN3, {"TF_ENABLE_ONEDNN_OPTS": "1"}, Numerics(onednn=True, isa="avx2", threads=1)),
    (SAPPHIRE_RAPIDS, {"TF_ENABLE_ONEDNN_OPTS": "false"}, Numerics(onednn=False, isa=None, threads=1)),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, Numerics(onednn=True, isa="avx2", threads=1)),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, Numerics(onednn=True, isa="avx512", threads=1)),
    (SAPPHIRE_RAPIDS, {"FEDLAB_WORKER_INTRAOP_THREADS": "1"}, Numerics(onednn=True, isa="avx512", threads=1)),
    (SAPPHIRE_RAPIDS, {"FEDLAB_WORKER_INTRAOP_THREADS": "0"}, Numerics(onednn=True, isa="avx512", threads=2)),
    (SAPPHIRE_RAPIDS, {"TF_NUM_INTRAOP_THREADS": "3"}, Numerics(onednn=True, isa="avx512", threads=3)),  # the caller's
    (SAPPHIRE_RAPIDS, {"FEDLAB_WORKER_INTRAOP_THREADS": "0", "TF_NUM_INTRAOP_THREADS": "3"},
     Numerics(onednn=True, isa="avx512", threads=2)),
    (SAPPHIRE_RAPIDS, {"DNNL_MAX_CPU_ISA": "AVX2"}, Numerics(onednn=True, isa="avx2", threads=1)),
])
def test_numerics_follow_tensorflows_onednn_policy(flags, environ, expected):
    assert reproduce.numerics(environ, flags, cores=2) == expected


def rerun_copying_the_committed_files(changed_value=None):
    """Stands in for the notebooks' full-setting rerun: notebook 06's committed files, one value changed if asked."""
    def rerun(*, only, figures_dir, results_dir, output_dir, cache_dir, jobs):
        for folder, target in ((reproduce.RESULTS, results_dir), (reproduce.FIGURES, figures_dir)):
            target.mkdir(parents=True)
            for path in folder.glob("06_*"):
                shutil.copy(path, target / path.name)
        if changed_value is not None:
            table = results_dir / "06_local_vs_workers.csv"
            table.write_text(table.read_text().replace("0.823", changed_value, 1))
    return rerun


MADE_WITH = Numerics(onednn=True, isa="avx512", threads=2)


@pytest.mark.parametrize("here, recorded", [(MADE_WITH, MADE_WITH), (Numerics(onednn=False, isa=None, threads=2),
                                                                      MADE_WITH), (MADE_WITH, None)])
def test_check_names_this_machines_arithmetic_and_passes_on_identical_files(monkeypatch, tmp_path, capsys, here,
                                                                            recorded):
    monkeypatch.setattr(reproduce, "numerics", lambda: here)
    monkeypatch.setattr(reproduce, "recorded_numerics", lambda: recorded)
    monkeypatch.setattr(reproduce, "reproduce", rerun_copying_the_committed_files())
    assert reproduce.check(only=["06"], scratch=tmp_path / "check") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"[check] TensorFlow's arithmetic here: {here.describe()}; ")
    if recorded is None:
        assert lines[0].endswith("the committed results do not record theirs")
    else:
        assert ("(the same)" in lines[0]) == (here == recorded) and recorded.describe() in lines[0]
    assert "[check] results/06_local_vs_workers.csv: identical" in lines
    assert lines[-1] == "[check] every file identical"


@pytest.mark.parametrize("here", [MADE_WITH, Numerics(onednn=False, isa=None, threads=2)])
def test_a_difference_is_said_to_be_possible_only_where_the_arithmetic_differs(monkeypatch, tmp_path, capsys, here):
    monkeypatch.setattr(reproduce, "numerics", lambda: here)
    monkeypatch.setattr(reproduce, "recorded_numerics", lambda: MADE_WITH)
    monkeypatch.setattr(reproduce, "reproduce", rerun_copying_the_committed_files(changed_value="0.824"))
    assert reproduce.check(only=["06"], scratch=tmp_path / "check") == 1
    lines = capsys.readouterr().out.splitlines()
    verdict = next(line for line in lines if line.startswith("[check] results/06_local_vs_workers.csv: "))
    assert verdict.endswith("largest difference 0.001 in final_eval_accuracy")
    if here == MADE_WITH:  # the same numerics: a difference is a real one
        assert lines[-1] == "[check] DIFFERENCES FOUND"
    else:
        assert "NOT the same" in lines[0]
        assert lines[-1].startswith("[check] DIFFERENCES FOUND (TensorFlow's arithmetic here is not known")


def test_reproduce_records_the_numerics_beside_the_results_it_made(tmp_path):
    reproduce.record_numerics(tmp_path)
    assert reproduce.recorded_numerics(tmp_path) == reproduce.numerics()
    (tmp_path / reproduce.NUMERICS_FILE).write_text("{damaged")
    assert reproduce.recorded_numerics(tmp_path) is None
