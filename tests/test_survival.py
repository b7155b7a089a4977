"""fedlab.data.survival: the Cox loss, the C-index and Kaplan-Meier, by hand and against lifelines.

The hand cases have three or five patients. The real-data tests read FLamby's Fed-TCGA-BRCA CSVs with pandas
(not through fedlab's loader) from FEDLAB_TCGA_BRCA_DIR, by default ../shared/data/fed_tcga_brca beside the
checkout, and are skipped when the files are not there.
"""

import inspect
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.utils import concordance_index

from fedlab.data import survival
from fedlab.data.survival import c_index, cox_loss, kaplan_meier

LN2 = math.log(2.0)
S = np.array([LN2, 0.0, 0.0])
# Case A: patient 0 dies at 1 with all three at risk (weights 2, 1, 1): ln 4 - ln 2; patient 2 dies last,
# alone at risk: 0. Patient 1 is censored.
Y_A = np.array([[1, 1], [0, 2], [1, 3]], dtype=float)
# Case B: patients 0 and 1 die together at 1. Breslow: both see the full risk set (ln 4 - ln 2) + (ln 4 - 0)
# = 3 ln 2, mean ln 2. (FLamby's order-dependent rule gives ln 6 / 3 = 0.597253, Efron ln 5 / 3 = 0.536479.)
Y_B = np.array([[1, 1], [1, 1], [0, 3]], dtype=float)

TCGA_DIR = pathlib.Path(os.environ.get("FEDLAB_TCGA_BRCA_DIR")
                        or pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fed_tcga_brca")
needs_tcga = pytest.mark.skipif(
    not all((TCGA_DIR / name).exists() for name in ("brca.csv", "train_test_split.csv")),
    reason=f"Fed-TCGA-BRCA CSVs (brca.csv, train_test_split.csv) not found in {TCGA_DIR}; set FEDLAB_TCGA_BRCA_DIR")


@pytest.fixture(scope="module")
def brca() -> pd.DataFrame:
    """brca.csv joined with FLamby's split: features, E, T, fold (train/test) and client (0-5)."""
    data = pd.read_csv(TCGA_DIR / "brca.csv").merge(pd.read_csv(TCGA_DIR / "train_test_split.csv"), on="pid")
    data["client"] = data["fold2"].str.split("_").str[1].astype(int)
    return data


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[["E", "T"]].to_numpy(np.float64)


def tf_loss_and_gradient(scores, y):
    """The loss through ``CoxBreslowLoss`` (Keras' default reduction) and its gradient, float32."""
    import tensorflow as tf

    s = tf.Variable(np.asarray(scores, np.float32).reshape(-1, 1))
    with tf.GradientTape() as tape:
        loss = survival.cox_loss_keras()(tf.constant(y, tf.float32), s)
    return float(loss), tape.gradient(loss, s).numpy().reshape(-1)


# --- the Cox loss by hand -----------------------------------------------------------------------------------

def test_cox_loss_by_hand():
    assert cox_loss(S, Y_A) == pytest.approx(LN2 / 3, rel=1e-12)  # 0.231049
    assert cox_loss(S, Y_B) == pytest.approx(LN2, rel=1e-12)  # 0.693147
    # Zero scores: sum of E_i ln(number at risk) / n = (ln 3 + ln 1) / 3.
    assert cox_loss(np.zeros(3), Y_A) == pytest.approx(math.log(3) / 3, rel=1e-12)
    assert cox_loss(S.reshape(-1, 1), Y_A) == pytest.approx(LN2 / 3, rel=1e-12)


def test_cox_gradient_by_hand():
    # A: L = (lse(s) - s0) / 3, softmax(s) = (1/2, 1/4, 1/4): (1/2 - 1, 1/4, 1/4) / 3. It sums to 0 (no bias move).
    loss, grad = tf_loss_and_gradient(S, Y_A)
    assert loss == pytest.approx(LN2 / 3, rel=1e-6)
    np.testing.assert_allclose(grad, [-1 / 6, 1 / 12, 1 / 12], atol=1e-7)
    # B: L = (2 lse(s) - s0 - s1) / 3: (2/2 - 1, 2/4 - 1, 2/4) / 3.
    loss, grad = tf_loss_and_gradient(S, Y_B)
    assert loss == pytest.approx(LN2, rel=1e-6)
    np.testing.assert_allclose(grad, [0.0, -1 / 6, 1 / 6], atol=1e-7)


def test_cox_loss_is_shift_invariant():
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=12), np.column_stack([rng.integers(0, 2, 12), rng.integers(0, 5, 12)]).astype(float)
    assert cox_loss(s + 7.5, y) == pytest.approx(cox_loss(s, y), rel=1e-12)
    assert tf_loss_and_gradient(s + 7.5, y)[0] == pytest.approx(tf_loss_and_gradient(s, y)[0], rel=1e-5)


@pytest.mark.parametrize("y", [np.array([[0, 1], [0, 2], [0, 2]], float), np.array([[1, 4]], float)],
                         ids=["no event", "one patient"])
def test_batch_without_a_comparison_has_zero_loss_and_gradient(y):
    s = np.linspace(-3, 3, len(y))
    assert cox_loss(s, y) == 0.0
    loss, grad = tf_loss_and_gradient(s, y)
    assert loss == 0.0
    np.testing.assert_array_equal(grad, np.zeros(len(y)))


def test_tf_gradient_is_finite_with_large_scores():
    y = np.array([[1, 1], [1, 2], [0, 2], [1, 3], [0, 5]], float)
    s = np.array([100.0, -100.0, 100.0, -100.0, 100.0])
    loss, grad = tf_loss_and_gradient(s, y)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(cox_loss(s, y), rel=1e-5)
    assert abs(grad.sum()) < 1e-5


def test_tf_terms_equal_numpy_case_a():
    import tensorflow as tf

    terms = survival.cox_terms(tf.constant(Y_A, tf.float32), tf.constant(S, tf.float32)).numpy()
    np.testing.assert_allclose(terms, [LN2, 0.0, 0.0], atol=1e-6)
    assert tf_loss_and_gradient(S, Y_A)[0] == pytest.approx(cox_loss(S, Y_A), rel=1e-5)


def test_keras_loss_serialises_for_tff():
    import tensorflow as tf

    loss = survival.cox_loss_keras()
    assert isinstance(loss, tf.keras.losses.Loss) and isinstance(loss, survival.CoxBreslowLoss)
    assert survival.CoxBreslowLoss is survival.cox_loss_keras().__class__  # made once
    # functional_model_from_keras refuses a loss whose sample_weight defaults to anything but None.
    assert inspect.signature(loss).parameters["sample_weight"].default is None
    config = loss.get_config()
    assert config == {"reduction": "auto", "name": "cox_breslow"}
    again = tf.keras.losses.deserialize(tf.keras.losses.serialize(loss))
    assert type(again) is survival.CoxBreslowLoss and again.get_config() == config


def test_import_does_not_import_tensorflow():
    code = "import sys, fedlab.data.survival; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@needs_tcga
def test_tf_loss_equals_numpy_on_real_batches(brca):
    # Random batches of 8 from each region's training set (tied times included), a linear model on raw age.
    import tensorflow as tf

    rng = np.random.default_rng(36)
    features = [c for c in brca.columns if c not in ("pid", "E", "T", "fold", "fold2", "client")]
    loss = survival.cox_loss_keras()
    for _, region in brca[brca["fold"] == "train"].groupby("client"):
        for _ in range(5):
            batch = region.iloc[rng.choice(len(region), 8, replace=False)]
            w = rng.normal(scale=0.1, size=len(features))
            s = batch[features].to_numpy(np.float64) @ w
            y = labels(batch)
            got = float(loss(tf.constant(y, tf.float32), tf.constant(s.reshape(-1, 1), tf.float32)))
            assert got == pytest.approx(cox_loss(s, y), rel=1e-5, abs=1e-6)


# --- the C-index ----------------------------------------------------------------------------------------------

def test_c_index_by_hand():
    # Admissible: (0,1) (0,2) (0,3) (0,4) (2,3) and (2,4) (4 censored at 2's death time). Concordant (0,3),
    # (2,3); a tie (0,2): 2.5 / 6.
    y = np.column_stack([[1, 0, 1, 0, 0], [1, 2, 3, 4, 3]]).astype(float)
    s = np.array([0.5, 0.9, 0.5, 0.3, 0.6])
    assert c_index(s, y) == pytest.approx(2.5 / 6, abs=1e-15)
    assert c_index(s, y, chunk=1) == pytest.approx(2.5 / 6, abs=1e-15)
    assert c_index(np.full(5, 0.7), y) == 0.5
    assert c_index(-s, y) == pytest.approx(3.5 / 6, abs=1e-15)


def test_c_index_undefined_is_nan():
    assert math.isnan(c_index([1.0, 2.0], [[0, 1], [0, 2]]))  # no death
    assert math.isnan(c_index([1.0, 2.0], [[1, 3], [1, 3]]))  # two deaths at the same time are not compared
    assert math.isnan(c_index([1.0, 2.0], [[1, 5], [0, 2]]))  # censored before the only death
    y = np.array([[1, 1], [0, 2]], float)
    assert math.isnan(c_index([np.nan, 1.0], y))
    assert math.isnan(c_index([np.inf, 1.0], y))


def test_c_index_equals_lifelines_on_tied_random_cases():
    rng = np.random.default_rng(1)
    undefined = 0
    for _ in range(300):
        n = int(rng.integers(2, 30))
        t = rng.integers(0, 6, n).astype(float)
        e = rng.integers(0, 2, n).astype(float)
        s = rng.integers(0, 4, n) / 2.0
        y = np.column_stack([e, t])
        try:
            expected = concordance_index(t, -s, e)
        except ZeroDivisionError:  # lifelines' "no admissible pair"
            undefined += 1
            assert math.isnan(c_index(s, y))
            continue
        assert c_index(s, y, chunk=int(rng.integers(1, 8))) == pytest.approx(expected, abs=1e-12)
    assert undefined < 300 // 5


# --- Kaplan-Meier -----------------------------------------------------------------------------------------------

def test_kaplan_meier_by_hand():
    table = kaplan_meier([1, 2, 2, 3, 5], [1, 1, 0, 0, 1])
    assert list(table.columns) == ["time", "at_risk", "events", "survival"]
    assert table["time"].tolist() == [1, 2, 3, 5]
    assert table["at_risk"].tolist() == [5, 4, 2, 1]
    assert table["events"].tolist() == [1, 1, 0, 1]
    np.testing.assert_allclose(table["survival"], [4 / 5, 4 / 5 * 3 / 4, 3 / 5, 0.0], atol=1e-15)


@needs_tcga
def test_kaplan_meier_equals_lifelines_per_region(brca):
    for _, region in brca.groupby("client"):
        table = kaplan_meier(region["T"], region["E"])
        fitted = KaplanMeierFitter().fit(region["T"], region["E"]).survival_function_
        at = fitted.index.to_numpy()
        step = np.searchsorted(table["time"].to_numpy(), at, side="right") - 1
        ours = np.where(step >= 0, table["survival"].to_numpy()[np.maximum(step, 0)], 1.0)
        assert np.abs(ours - fitted.iloc[:, 0].to_numpy()).max() < 1e-12


# --- against lifelines' Cox model on real data ------------------------------------------------------------------

@needs_tcga
def test_cox_loss_and_c_index_equal_coxph_fit(brca):
    # The pooled test set has no two deaths at the same time, so lifelines' Efron likelihood is Breslow's.
    test = brca[brca["fold"] == "test"]
    assert not test.loc[test["E"] == 1, "T"].duplicated().any()
    columns = ["age_at_index", "ajcc_pathologic_stage_Stage IIIA", "prior_malignancy_yes"]
    cph = CoxPHFitter(penalizer=0.0).fit(test[columns + ["E", "T"]], duration_col="T", event_col="E")
    x, y = test[columns].to_numpy(np.float64), labels(test)
    beta = cph.params_[columns].to_numpy()
    assert len(test) * cox_loss(x @ beta, y) == pytest.approx(-cph.log_likelihood_, rel=1e-8)  # 124.329248
    assert c_index(x @ beta, y) == pytest.approx(cph.concordance_index_, abs=1e-12)  # 0.738645
    for k in range(len(beta)):  # beta-hat is the minimum: the finite-difference gradient vanishes
        h = np.zeros_like(beta)
        h[k] = 1e-5
        assert abs(cox_loss(x @ (beta + h), y) - cox_loss(x @ (beta - h), y)) / 2e-5 < 1e-5


@needs_tcga
def test_age_alone_c_index_per_test_region(brca):
    test = brca[brca["fold"] == "test"]
    got = [c_index(region["age_at_index"], labels(region)) for _, region in test.groupby("client")]
    np.testing.assert_allclose(got, [0.573, 0.886, 0.764, 0.333, 0.979, 0.667], atol=5e-4)
    assert c_index(test["age_at_index"], labels(test)) == pytest.approx(0.705, abs=5e-4)
    assert cox_loss(np.zeros(len(test)), labels(test)) == pytest.approx(0.597173, abs=5e-7)


# --- bad input ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: cox_loss([1.0, 2.0], [1.0, 2.0]), "y: must be an (n, 2)"),
    (lambda: c_index([1.0, 2.0], np.ones((2, 3))), "y: must be an (n, 2)"),
    (lambda: cox_loss([1.0, 2.0, 3.0], [[1, 1], [0, 2]]), "scores and y: lengths must match"),
    (lambda: c_index(np.ones((2, 2)), [[1, 1], [0, 2]]), "scores: must be one score per patient"),
    (lambda: cox_loss([1.0, 2.0], [[2, 1], [0, 2]]), "y: the event column"),
    (lambda: cox_loss([1.0, 2.0], [[1, np.nan], [0, 2]]), "y: the time column"),
    (lambda: c_index([1.0], [[1, 1]], chunk=0), "chunk: must be a positive integer"),
    (lambda: kaplan_meier([1, 2], [1]), "time and event: lengths must match"),
    (lambda: kaplan_meier([1, 2], [1, 3]), "event: must be 0 or 1"),
])
def test_bad_input_is_one_line_naming_the_argument(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_empty_and_diverged():
    assert math.isnan(cox_loss([], np.zeros((0, 2))))
    assert math.isnan(cox_loss([np.inf, 0.0], [[1, 1], [0, 2]]))
    assert kaplan_meier([], []).empty
