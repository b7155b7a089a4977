"""``reproduce --check`` names what TensorFlow's arithmetic depends on here and whether it is what the committed
results were made with, so a difference on another machine is reported as one that can happen there."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from fedlab.core import runtime
from fedlab.notebook import reproduce
from fedlab.notebook.reproduce import Numerics

# /proc/cpuinfo flags of three CPUs (the ones that matter here)
SAPPHIRE_RAPIDS = {"avx", "avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx512_bf16",
                   "amx_tile", "amx_int8", "amx_bf16"}
SKYLAKE_SP = {"avx", "avx2", "fma", "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"}  # no VNNI
EPYC_ZEN3 = {"avx", "avx2", "fma", "sse4_2"}  # no AVX-512, no VNNI


@pytest.mark.parametrize("flags, environ, expected", [
    (SAPPHIRE_RAPIDS, {}, Numerics(onednn=True, isa="avx512", threads=1)),
    # fedlab's default: oneDNN on where TF 2.14's would leave it off (AVX-512 without VNNI, AVX2), so an AVX-512 CPU
    # with VNNI and one without compute alike
    (SKYLAKE_SP, {}, Numerics(onednn=True, isa="avx512", threads=1)),
    (EPYC_ZEN3, {}, Numerics(onednn=True, isa="avx2", threads=1)),
    (EPYC_ZEN3, {"TF_ENABLE_ONEDNN_OPTS": ""}, Numerics(onednn=True, isa="avx2", threads=1)),
    (SKYLAKE_SP, {"TF_ENABLE_ONEDNN_OPTS": "0"}, Numerics(onednn=False, isa=None, threads=1)),  # the caller's own
    (SAPPHIRE_RAPIDS, {"TF_ENABLE_ONEDNN_OPTS": "false"}, Numerics(onednn=False, isa=None, threads=1)),
    (SAPPHIRE_RAPIDS, {"TF_ENABLE_ONEDNN_OPTS": "TRUE"}, Numerics(onednn=True, isa="avx512", threads=1)),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, Numerics(onednn=True, isa="avx2", threads=1)),
    (SAPPHIRE_RAPIDS, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, Numerics(onednn=True, isa="avx512", threads=1)),
    (SAPPHIRE_RAPIDS, {"FEDLAB_WORKER_INTRAOP_THREADS": "1"}, Numerics(onednn=True, isa="avx512", threads=1)),
    (SAPPHIRE_RAPIDS, {"FEDLAB_WORKER_INTRAOP_THREADS": "0"}, Numerics(onednn=True, isa="avx512", threads=2)),
    (SAPPHIRE_RAPIDS, {"TF_NUM_INTRAOP_THREADS": "3"}, Numerics(onednn=True, isa="avx512", threads=3)),  # the caller's
    (SAPPHIRE_RAPIDS, {"FEDLAB_WORKER_INTRAOP_THREADS": "0", "TF_NUM_INTRAOP_THREADS": "3"},
     Numerics(onednn=True, isa="avx512", threads=2)),
    (SAPPHIRE_RAPIDS, {"DNNL_MAX_CPU_ISA": "AVX2"}, Numerics(onednn=True, isa="avx2", threads=1)),
])
def test_numerics_follow_fedlabs_onednn_setting(flags, environ, expected):
    assert reproduce.numerics(environ, flags, cores=2) == expected


@pytest.mark.parametrize("value", ["yes", " 1", "2"])
def test_a_onednn_setting_tensorflow_cannot_read_is_refused_naming_the_variable(value):
    with pytest.raises(ValueError, match=r"^TF_ENABLE_ONEDNN_OPTS: must be 0, 1, false or true"):
        reproduce.numerics({"TF_ENABLE_ONEDNN_OPTS": value}, SKYLAKE_SP, cores=2)
    with pytest.raises(ValueError, match=r"^TF_ENABLE_ONEDNN_OPTS: "):
        runtime.worker_environment({"TF_ENABLE_ONEDNN_OPTS": value})


def test_importing_fedlab_turns_onednn_on_unless_the_caller_set_it():
    """In a fresh interpreter: fedlab's import sets the variable before TensorFlow could read it, keeps the caller's
    own, and TFF's worker gets what this process has."""
    code = ("import os, sys, fedlab; from fedlab.core import runtime; "
            "print(os.environ['TF_ENABLE_ONEDNN_OPTS'], runtime.worker_environment()['TF_ENABLE_ONEDNN_OPTS'], "
            "'tensorflow' in sys.modules)")
    for caller, expected in ((None, "1 1 False"), ("", "1 1 False"), ("0", "0 0 False"), ("true", "true 1 False")):
        env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
        if caller is not None:
            env["TF_ENABLE_ONEDNN_OPTS"] = caller
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                             check=True)
        assert out.stdout.split("\n")[0] == expected, (caller, out.stdout, out.stderr[-500:])


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
    monkeypatch.setattr(reproduce, "recorded_numerics", lambda: None if recorded is None else {"06": recorded})
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
    monkeypatch.setattr(reproduce, "recorded_numerics", lambda: {"06": MADE_WITH})
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


def test_reproduce_records_the_numerics_of_each_notebook_it_ran_beside_its_results(tmp_path, monkeypatch, capsys):
    other = Numerics(onednn=False, isa=None, threads=2)
    monkeypatch.setattr(reproduce, "numerics", lambda: other)
    reproduce.record_numerics(tmp_path, ["01", "08"])
    monkeypatch.setattr(reproduce, "numerics", lambda: MADE_WITH)
    reproduce.record_numerics(tmp_path, ["08"])  # --only 08 on another machine: 01's record stays
    assert reproduce.recorded_numerics(tmp_path) == {"01": other, "08": MADE_WITH}
    assert not list(tmp_path.glob("*.partial"))
    # the older form, one record for every notebook, is read as that for each
    (tmp_path / reproduce.NUMERICS_FILE).write_text(json.dumps({"isa": "avx512", "onednn": True, "threads": 1}))
    older = reproduce.recorded_numerics(tmp_path)
    assert set(older) == {p.name[:2] for p in reproduce.notebooks()}
    assert set(older.values()) == {Numerics(onednn=True, isa="avx512", threads=1)}
    # a damaged record: one line naming the file, and rewritten with the notebooks just run
    (tmp_path / reproduce.NUMERICS_FILE).write_text("{damaged")
    with pytest.raises(ValueError, match=r"^numerics\.json: damaged, not read"):
        reproduce.recorded_numerics(tmp_path)
    reproduce.record_numerics(tmp_path, ["03"])
    assert capsys.readouterr().out.startswith("[reproduce] numerics.json: damaged, not read")
    assert reproduce.recorded_numerics(tmp_path) == {"03": MADE_WITH}
    assert reproduce.recorded_numerics(tmp_path / "nowhere") is None


def test_check_names_each_notebooks_recorded_arithmetic_where_they_differ(monkeypatch, tmp_path, capsys):
    """Results made on two machines (08's with oneDNN off): the first line says which notebook's differ, and a
    difference is then said to be possible for that reason."""
    other = Numerics(onednn=False, isa=None, threads=1)
    monkeypatch.setattr(reproduce, "numerics", lambda: MADE_WITH)
    monkeypatch.setattr(reproduce, "recorded_numerics", lambda: {"06": MADE_WITH, "08": other})
    monkeypatch.setattr(reproduce, "notebooks", lambda only: [reproduce.NOTEBOOKS / "06_x.ipynb",
                                                              reproduce.NOTEBOOKS / "08_y.ipynb"])
    monkeypatch.setattr(reproduce, "reproduce", rerun_copying_the_committed_files())
    reproduce.check(only=["06", "08"], scratch=tmp_path / "check")
    first = capsys.readouterr().out.splitlines()[0]
    assert first.endswith(f"the committed results' -- 06: {MADE_WITH.describe()} (the same); "
                          f"08: {other.describe()} -- NOT the same")
    monkeypatch.setattr(reproduce, "recorded_numerics", lambda: {"06": MADE_WITH})
    reproduce.check(only=["06", "08"], scratch=tmp_path / "check")
    assert capsys.readouterr().out.splitlines()[0].endswith("08: not recorded")


def test_check_says_in_its_first_line_that_the_record_is_damaged(monkeypatch, tmp_path, capsys):
    def damaged():
        raise ValueError("numerics.json: damaged, not read (JSONDecodeError: Expecting value)")
    monkeypatch.setattr(reproduce, "numerics", lambda: MADE_WITH)
    monkeypatch.setattr(reproduce, "recorded_numerics", damaged)
    monkeypatch.setattr(reproduce, "reproduce", rerun_copying_the_committed_files(changed_value="0.824"))
    assert reproduce.check(only=["06"], scratch=tmp_path / "check") == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("the committed results' record: numerics.json: damaged, not read (JSONDecodeError: "
                             "Expecting value)")
    assert lines[-1].startswith("[check] DIFFERENCES FOUND (TensorFlow's arithmetic here is not known")


@pytest.mark.parametrize("text", [
    '{"08": {"isa": ["x"], "onednn": true, "threads": 1}}',  # not a vector ISA
    '{"onednn": true, "isa": null, "threads": 1}',  # oneDNN without its ISA
    '{"08": {"isa": null, "onednn": false, "threads": "1"}}',
    '{"8": {"isa": null, "onednn": false, "threads": 1}}',  # not a notebook number
    '[1, 2]', "\udcff",
])
def test_a_record_that_is_not_one_of_numerics_is_said_damaged_in_one_line(tmp_path, text):
    (tmp_path / reproduce.NUMERICS_FILE).write_text(text, errors="surrogateescape")
    with pytest.raises(ValueError, match=r"^numerics\.json: damaged, not read \(") as raised:
        reproduce.recorded_numerics(tmp_path)
    assert "\n" not in str(raised.value)


def test_a_record_that_cannot_be_read_is_said_so_and_not_overwritten(tmp_path, monkeypatch):
    (tmp_path / reproduce.NUMERICS_FILE).mkdir()
    with pytest.raises(reproduce.UnreadableRecord, match=r"^numerics\.json: cannot be read \(IsADirectoryError"):
        reproduce.recorded_numerics(tmp_path)
    monkeypatch.setattr(reproduce, "numerics", lambda: MADE_WITH)
    with pytest.raises(reproduce.UnreadableRecord):
        reproduce.record_numerics(tmp_path, ["01"])
    assert (tmp_path / reproduce.NUMERICS_FILE).is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [reproduce.NUMERICS_FILE]  # no temporary file left


def test_a_record_held_by_another_writer_past_the_limit_is_a_timeout_naming_it(tmp_path, monkeypatch):
    import fcntl

    monkeypatch.setattr(reproduce, "numerics", lambda: MADE_WITH)
    monkeypatch.setattr(reproduce, "NUMERICS_LOCK_S", 0.3)
    holder = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)
        with pytest.raises(TimeoutError, match=r"the record of numerics in .*: waited 0.3 s for its lock"):
            reproduce.record_numerics(tmp_path, ["01"])
    finally:
        os.close(holder)
    reproduce.record_numerics(tmp_path, ["01"])  # released: written
    assert reproduce.recorded_numerics(tmp_path) == {"01": MADE_WITH}


def test_notebooks_finishing_at_once_each_keep_their_record(tmp_path, monkeypatch):
    import threading

    monkeypatch.setattr(reproduce, "numerics", lambda: MADE_WITH)
    start = threading.Barrier(8)

    def record(prefix):
        start.wait(timeout=30)
        for _ in range(5):
            reproduce.record_numerics(tmp_path, [prefix])
    errors = []

    def recording(prefix):
        try:
            record(prefix)
        except BaseException as err:  # noqa: BLE001 - said below, with the test's failure
            errors.append(err)
    threads = [threading.Thread(target=recording, args=(f"0{i}",)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and errors == []
    assert reproduce.recorded_numerics(tmp_path) == {f"0{i}": MADE_WITH for i in range(1, 9)}
    assert [p.name for p in tmp_path.iterdir()] == [reproduce.NUMERICS_FILE]


def test_a_notebook_that_finished_is_recorded_though_a_later_one_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(reproduce, "numerics", lambda: MADE_WITH)

    def run_notebook(path, **kwargs):
        if path.name.startswith("02"):
            raise RuntimeError("02 failed")
        return path
    monkeypatch.setattr(reproduce, "run_notebook", run_notebook)
    with pytest.raises(RuntimeError, match="02 failed"):
        reproduce.reproduce(only=["01", "02"], jobs=1, results_dir=tmp_path, figures_dir=tmp_path / "f",
                            output_dir=tmp_path / "o", cache_dir=tmp_path / "c")
    assert reproduce.recorded_numerics(tmp_path) == {"01": MADE_WITH}


def test_tensorflow_imported_before_fedlab_is_warned_of_and_only_then():
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    warned = "TensorFlow was imported before fedlab: this process keeps TensorFlow's own kernels"
    for code, caller, expected in (("import tensorflow; import fedlab", None, True),
                                   ("import fedlab; import tensorflow", None, False),
                                   ("import tensorflow; import fedlab", "1", False)):  # the caller's own setting
        run_env = dict(env) if caller is None else dict(env, TF_ENABLE_ONEDNN_OPTS=caller)
        out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=run_env, capture_output=True,
                             text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        assert (warned in out.stderr) == expected, (code, caller, out.stderr[-1000:])
