"""Every pair of settings a researcher combines: refused only as listed, and the accepted ones run (issue #33).

The pairs, and which refusals are impossible in any system, which need a
public value the config must give (and run with it), and which are fedlab's
limits today, are in ``tools/combination_matrix.py``; the README's matrix is
generated from them.
"""

import importlib.util
import math
import pathlib
import warnings

import numpy as np
import pytest

from fedlab import ExperimentConfig, run_experiment
from fedlab.experiment.clients import spec_for

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("combination_matrix", ROOT / "tools" / "combination_matrix.py")
matrix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(matrix)

TABLE = matrix.table()
ACCEPTED = list(matrix.runnable_pairs())  # accepted, or given the public value the pair needs (matrix.NEEDS)
TINY = dict(num_clients=6, clients_per_round=3, local_steps=2)
KEEP_PROCESSES = 16  # built processes kept between pairs (neighbouring pairs share them); more is only memory


def test_every_refusal_is_listed_as_impossible_needing_a_value_or_a_limit():
    unlisted = TABLE[TABLE.verdict.isin(["unlisted", "crashed"])]
    assert unlisted.empty, "refused or crashed without being listed:\n" + unlisted.to_string()
    listed = set(matrix.IMPOSSIBLE) | matrix.LIMITS | set(matrix.NEEDS)
    accepted = {frozenset((a, b)) for a, b in zip(TABLE.a, TABLE.b)} & listed
    accepted &= {frozenset((r.a, r.b)) for r in TABLE.itertuples() if r.verdict == "accepted"}
    assert not accepted, f"listed as refused but accepted (take them off the lists): {sorted(map(sorted, accepted))}"
    assert not set(matrix.IMPOSSIBLE) & matrix.LIMITS
    assert not set(matrix.NEEDS) & (set(matrix.IMPOSSIBLE) | matrix.LIMITS)
    pairs = {frozenset((a, b)) for a, b in zip(TABLE.a, TABLE.b)}
    assert listed <= pairs, f"listed pairs that are not in the matrix: {sorted(map(sorted, listed - pairs))}"
    assert (TABLE.verdict == "needs").sum() == len(matrix.NEEDS)  # each refused, then accepted given its value
    for field, setting, _ in matrix.NEEDS.values():
        assert set(setting) == {field}  # the value the refusal names, nothing else


def test_the_readme_matrix_is_generated_from_the_current_code():
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(matrix.BEGIN), readme.index(matrix.END) + len(matrix.END)
    assert readme[start:end] == matrix.readme_section(TABLE), "run: python tools/combination_matrix.py --readme"


def test_the_matrix_counts_what_the_issue_counts():
    # issue #33: nine groups and workers, every pair from two groups (371), and distributed DP's pairs with the other
    # groups' 27 settings
    assert len(TABLE) == 371 + 27
    assert (TABLE.verdict == "impossible").sum() == len(matrix.IMPOSSIBLE)


@pytest.fixture(scope="module")
def worker_address():
    from fedlab.workers.distributed import LocalWorkers

    with LocalWorkers(1) as workers:
        yield workers.addresses[0]


def _marks(g1, g2):
    return [pytest.mark.xdist_group("matrix-workers")] if "workers" in (g1, g2) else []


# partners of user-level DP whose noiseless rerun would check nothing the pair with fedavg does not: they change who
# trains, how long, on what (systems, attacks) or what is scored (frozen layers, fine-tuning), not whether the DP
# server steps (an algorithm, a robust rule, a sum that rounds, workers: rerun)
SAME_SERVER_STEP = {"systems", "attack", "frozen", "finetune"}


def _rerun_without_noise(groups, config) -> bool:
    """Whether a user-level DP pair is run again without noise to see that it trains (the noise alone moves the model).
    Not for distributed DP: its rounding is unbiased (it cannot round every update away), its noiseless decoding is
    checked against the clipped mean in tests/test_distributed_dp.py, and its server steps as the fixed-DP pair's."""
    return config.user_level_dp and config.dp != "distributed" and not SAME_SERVER_STEP & set(groups)


@pytest.mark.slow
@pytest.mark.parametrize("fields, given, groups", [
    pytest.param(f, matrix.NEEDS.get(frozenset((a, b)), (None, {}))[1], (g1, g2), id=f"{a} + {b}",
                 marks=_marks(g1, g2))
    for g1, a, g2, b, f in ACCEPTED])
def test_an_accepted_pair_runs_two_rounds(fields, given, groups, request):
    from fedlab.experiment import processes

    if processes.process_cache_size() > KEEP_PROCESSES:
        processes.clear_process_cache()
    fields = {**fields, **TINY, **given}  # a pair that needs a value runs with the one it is listed with
    if fields.get("algorithm") == "fedsgd":
        del fields["local_steps"]  # one full-batch gradient per client
    if fields.get("workers"):
        fields["workers"] = (request.getfixturevalue("worker_address"),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # settings warnings (few clients for a defence, etc.) are not the point
        history = run_experiment(ExperimentConfig(**fields), progress=False)
    assert list(history["round"]) == [1, 2]
    assert math.isfinite(history["eval_loss"].iloc[-1])
    # and it trained: the global model is not the one it started from (a pair whose sums round every update to
    # zero, or whose server never steps, would finish two finite rounds all the same); user-level DP's server noise
    # moves the model by itself, so such a pair is checked again without noise
    config = ExperimentConfig(**fields)
    trained_check = not config.user_level_dp or _rerun_without_noise(groups, config)
    if config.user_level_dp and trained_check:
        config = config.replace(noise_multiplier=0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            history = run_experiment(config, progress=False)
    keras = spec_for(config).build_keras(config.seeds["model"])
    trained = [v.numpy() for v in keras.trainable_variables]
    frozen = [v.numpy() for v in keras.non_trainable_variables]
    final = history.attrs["final_weights"].value
    assert len(final) == len(trained) + len(frozen)
    if trained_check:
        assert any(not np.array_equal(a, b) for a, b in zip(final, trained)), "the global model did not move"
    assert all(np.array_equal(a, b) for a, b in zip(final[len(trained):], frozen)), "a frozen layer moved"
