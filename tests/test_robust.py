"""Byzantine-robust aggregators (fedlab.aggregators.robust): NumPy references by hand, then TFF's processes against them."""

import collections

import numpy as np
import pytest

from fedlab.aggregators import robust

# Five 2-d updates; the last is an outlier.
#   P0 = (0, 0), P1 = (1, 0), P2 = (0, 2), P3 = (2, 2), P4 = (40, -30)
POINTS = np.array([[0, 0], [1, 0], [0, 2], [2, 2], [40, -30]], dtype=np.float64)


def test_median_by_hand():
    # one coordinate: sorted 1, 2, 3, 4, 100 -> the middle one, 3
    assert robust.coordinate_median([[1], [2], [3], [100], [4]]).tolist() == [3.0]
    # x: 0, 1, 0, 2, 40 -> sorted 0, 0, 1, 2, 40 -> 1;  y: 0, 0, 2, 2, -30 -> sorted -30, 0, 0, 2, 2 -> 0
    np.testing.assert_allclose(robust.coordinate_median(POINTS), [1.0, 0.0])
    # even m = 4 (P0..P3): x sorted 0, 0, 1, 2 -> (0 + 1) / 2 = 0.5;  y sorted 0, 0, 2, 2 -> (0 + 2) / 2 = 1
    np.testing.assert_allclose(robust.coordinate_median(POINTS[:4]), [0.5, 1.0])
    # NaN counts as +inf: 1, 2, 3, NaN, 4 -> sorted 1, 2, 3, 4, inf -> 3
    assert robust.coordinate_median([[1], [2], [3], [np.nan], [4]]).tolist() == [3.0]


def test_trimmed_mean_by_hand():
    # beta = 0.2, m = 5: b = floor(0.2 * 5) = 1 dropped at each end; 1, 2, 3, 4, 100 -> mean(2, 3, 4) = 3
    assert robust.trimmed_mean([[1], [2], [3], [100], [4]], 0.2).tolist() == [3.0]
    # x: sorted 0, 0, 1, 2, 40 -> mean(0, 1, 2) = 1;  y: sorted -30, 0, 0, 2, 2 -> mean(0, 0, 2) = 2/3
    np.testing.assert_allclose(robust.trimmed_mean(POINTS, 0.2), [1.0, 2 / 3])
    # beta = 0.1: b = floor(0.5) = 0, the plain mean: x (0+1+0+2+40)/5 = 8.6, y (0+0+2+2-30)/5 = -5.2
    np.testing.assert_allclose(robust.trimmed_mean(POINTS, 0.1), [8.6, -5.2])
    # beta = 0.4, m = 5: b = floor(2) = 2 -> only the middle value is left: the median
    np.testing.assert_allclose(robust.trimmed_mean(POINTS, 0.4), [1.0, 0.0])
    # m = 2, beta = 0.4999999999: b = floor(0.9999999998 + 1e-9) = 1 leaves nothing -> the median, (1 + 2) / 2
    assert robust.trimmed_mean([[1], [2]], 0.4999999999).tolist() == [1.5]
    assert robust.fraction_count(0.29, 100) == 29  # 0.29 * 100 = 28.999999999999996 in floats
    with pytest.raises(ValueError):
        robust.trimmed_mean(POINTS, 0.5)


def test_krum_by_hand():
    # squared distances:  0-1: 1   0-2: 4   0-3: 4+4 = 8   0-4: 40^2+30^2 = 2500
    #                     1-2: 1+4 = 5   1-3: 1+4 = 5   1-4: 39^2+30^2 = 2421
    #                     2-3: 4   2-4: 40^2+32^2 = 2624   3-4: 38^2+32^2 = 2468
    # f = 1, m = 5: n = m - f - 2 = 2 nearest others
    #   S0 = 1 + 4 = 5,  S1 = 1 + 5 = 6,  S2 = 4 + 4 = 8,  S3 = 4 + 5 = 9,  S4 = 2421 + 2468 = 4889
    np.testing.assert_allclose(robust.krum_scores(POINTS, 1), [5, 6, 8, 9, 4889])
    np.testing.assert_allclose(robust.krum(POINTS, 1), [0, 0])                 # P0
    np.testing.assert_allclose(robust.krum(POINTS, 1, multi=2), [0.5, 0])      # mean(P0, P1)
    np.testing.assert_allclose(robust.krum(POINTS, 1, multi=3), [1 / 3, 2 / 3])  # mean(P0, P1, P2)
    # f = 0: n = 3;  S0 = 1+4+8 = 13, S1 = 1+5+5 = 11, S2 = 4+5+4 = 13, S3 = 8+5+4 = 17 -> P1
    assert robust.krum_selection(POINTS, 0).tolist() == [1]
    # f = 3: m - f - 2 = 0 < 1 -> 1 neighbour: S0 = 1, S1 = 1, S2 = 4, S3 = 4; tie S0 = S1 -> lowest index, P0
    assert robust.krum_selection(POINTS, 3, multi=4).tolist() == [0, 1, 2, 3]
    # one-dimensional: 1, 2, 3, 100, 4 with f = 1 (n = 2): S = 1+4, 1+1, 1+1, 96^2+97^2, 1+4 -> tie 2 = 3 -> 2
    assert robust.krum([[1], [2], [3], [100], [4]], 1).tolist() == [2.0]
    # a NaN update is at distance +inf from all: never chosen
    assert robust.krum_selection([[1], [np.nan], [2], [3]], 1, multi=3).tolist() == [0, 2, 3]
    assert robust.krum_selection(POINTS[:1], 0, multi=3).tolist() == [0]  # a single update: itself
    with pytest.raises(ValueError):
        robust.krum(POINTS, 1, multi=0)


def test_krum_factory_arguments():
    with pytest.raises(ValueError):
        robust.KrumFactory()
    with pytest.raises(ValueError):
        robust.KrumFactory(1, byzantine_fraction=0.2)
    with pytest.raises(ValueError):
        robust.KrumFactory(byzantine_fraction=0.5)
    with pytest.raises(ValueError):
        robust.TrimmedMeanFactory(-0.1)


# ---------------------------------------------------------------------------------------------------------------
# TFF processes (TFF's import is about 15 s; one xdist group so that only one worker pays it for this file)

def _clients(rng, m, outlier=None):
    """m client updates of structure {a: float32 (2,), b: float32 (1, 2)}, one of them huge if ``outlier``."""
    flat = rng.uniform(-1, 1, size=(m, 4)).astype(np.float32)
    if outlier is not None:
        flat[outlier] = 1e6
    return flat, [collections.OrderedDict(a=row[:2], b=row[2:].reshape(1, 2)) for row in flat]


def _flat(result):
    return np.concatenate([np.asarray(result["a"]).ravel(), np.asarray(result["b"]).ravel()])


FACTORIES = {
    "median": (lambda: robust.CoordinateMedianFactory(), robust.coordinate_median),
    "trimmed_mean": (lambda: robust.TrimmedMeanFactory(0.2), lambda u: robust.trimmed_mean(u, 0.2)),
    "krum": (lambda: robust.KrumFactory(1), lambda u: robust.krum(u, 1)),
    "multi_krum": (lambda: robust.KrumFactory(byzantine_fraction=0.2, multi=3),
                   lambda u: robust.krum(u, robust.fraction_count(0.2, len(u)), multi=3)),
}


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.slow
@pytest.mark.xdist_group("robust")
def test_tff_process_matches_numpy_and_ignores_an_outlier(name):
    from fedlab.core.runtime import tff

    t = tff()
    make, reference = FACTORIES[name]
    factory = make()
    assert isinstance(factory, t.aggregators.UnweightedAggregationFactory)
    value_type = t.types.to_type(collections.OrderedDict(a=t.types.TensorType(np.float32, [2]),
                                                         b=t.types.TensorType(np.float32, [1, 2])))
    process = factory.create(value_type)
    state = process.initialize()
    rng = np.random.default_rng(7)
    for m, outlier in [(5, None), (5, 3), (4, None)]:  # 4: an even count
        flat, values = _clients(rng, m, outlier)
        output = process.next(state, values)
        result = output.result
        assert result["a"].shape == (2,) and result["b"].shape == (1, 2) and result["a"].dtype == np.float32
        # TFF computes in float32, the reference in float64; atol for means of values of mixed sign near 0
        np.testing.assert_allclose(_flat(result), reference(flat), rtol=1e-6, atol=1e-7)
        measurements = output.measurements
        assert measurements["num_updates"] == m
        if name.endswith("krum"):
            f = factory.byzantine_count(m)
            assert measurements["byzantine"] == f
            expected = robust.krum_selection(flat, f, factory.multi).tolist()
            assert list(measurements["selected"]) == expected + [-1] * (factory.multi - len(expected))
        if outlier is not None:
            honest = np.delete(flat, outlier, axis=0)
            assert np.all(_flat(result) >= honest.min(axis=0) - 1e-6)
            assert np.all(_flat(result) <= honest.max(axis=0) + 1e-6)
            assert np.all(flat.mean(axis=0) > 1e5)  # the plain mean is dragged away


@pytest.mark.slow
@pytest.mark.xdist_group("robust")
def test_tff_process_keeps_other_structures_and_dtypes():
    from fedlab.core.runtime import tff

    t = tff()
    # a bare tensor
    process = robust.CoordinateMedianFactory().create(t.types.TensorType(np.float32, [3]))
    values = [np.array([1, 5, -1], np.float32), np.array([2, 4, 0], np.float32), np.array([100, 3, 1], np.float32)]
    output = process.next(process.initialize(), values)
    np.testing.assert_allclose(output.result, [2, 4, 0])  # the middle of (1, 2, 100), (5, 4, 3), (-1, 0, 1)
    # a list of a float64 matrix and a float32 scalar, as model weights come
    value_type = t.types.to_type([t.types.TensorType(np.float64, [2, 1]), t.types.TensorType(np.float32, [])])
    process = robust.TrimmedMeanFactory(0.25).create(value_type)
    values = [[np.array([[v], [-v]], np.float64), np.float32(10 * v)] for v in (1.0, 2.0, 3.0, 1e9)]
    output = process.next(process.initialize(), values)
    # m = 4, b = floor(0.25 * 4) = 1: first entry 1, 2, 3, 1e9 -> mean(2, 3) = 2.5; second -2.5; third 25
    assert output.result[0].dtype == np.float64 and output.result[0].shape == (2, 1)
    np.testing.assert_allclose(output.result[0], [[2.5], [-2.5]], rtol=1e-6)
    np.testing.assert_allclose(output.result[1], 25.0, rtol=1e-6)
    assert output.measurements["trimmed_per_side"] == 1


@pytest.mark.slow
@pytest.mark.xdist_group("robust")
@pytest.mark.parametrize("name, reference", [("median", robust.coordinate_median),
                                             ("krum", lambda rows: rows[robust.krum_selection(rows, 0)[0]])])
def test_a_statistic_of_compressed_updates_is_taken_of_what_the_server_decodes(name, reference):
    """8-bit compression with a median or Krum (fedlab.aggregators.aggregation.make_aggregator): every client quantises its
    update between its own min and max, the server decodes each and takes the statistic; the clients' weights
    play no part. Updates already on their quantisation grid decode to themselves, so the result is the
    statistic of the updates by hand; off the grid, each decoded value is a neighbouring grid point."""
    from fedlab import ExperimentConfig
    from fedlab.aggregators import aggregation
    from fedlab.core.runtime import tff

    t = tff()
    config = ExperimentConfig(dataset="digits", num_clients=10, clients_per_round=3, quantization_bits=2,
                              robust=name, robust_fraction=0.0 if name == "krum" else 0.2)
    process = aggregation.make_aggregator(config).create(t.types.TensorType(np.float32, [4]),
                                                        t.TensorType(np.float32))
    # 2 bits: 4 levels lo + k (hi - lo) / 3; each client's values are on its own grid
    on_grid = np.array([[0, 3, 1, 2], [6, 0, 2, 4], [-1, 2, 1, 0]], np.float32)
    output = process.next(process.initialize(), list(on_grid), [1.0, 100.0, 1.0])
    np.testing.assert_allclose(output.result, reference(on_grid.astype(np.float64)), rtol=0, atol=1e-6)
    off_grid = on_grid.copy()
    off_grid[0, 2:] = [1.4, 0.2]  # client 0: lo 0, hi 3 kept, so 1.4 decodes to 1 or 2 and 0.2 to 0 or 1
    decoded = np.asarray(process.next(process.initialize(), list(off_grid), [1.0, 1.0, 1.0]).result)
    candidates = [reference(np.array([a, *on_grid[1:]], np.float64))
                  for a in ([0, 3, b, c] for b in (1, 2) for c in (0, 1))]
    assert any(np.allclose(decoded, c, rtol=0, atol=1e-6) for c in candidates), decoded
