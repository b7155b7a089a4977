"""Byzantine-robust aggregators: coordinate-wise median, trimmed mean, Krum and Multi-Krum.

Each is an unweighted ``tff.aggregators`` factory whose statistic needs every
client's update of the round at the server, not only their sum:

* :class:`CoordinateMedianFactory`: the coordinate-wise median (Yin et al.
  2018, "Byzantine-Robust Distributed Learning: Towards Optimal Statistical
  Rates", ICML, arXiv:1803.01498).
* :class:`TrimmedMeanFactory`: the coordinate-wise beta-trimmed mean (Yin et
  al. 2018).
* :class:`KrumFactory`: Krum and Multi-Krum (Blanchard et al. 2017, "Machine
  Learning with Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS;
  Multi-Krum as there and in El Mhamdi et al. 2018, "The Hidden Vulnerability
  of Distributed Learning in Byzantium", ICML, arXiv:1802.07927).

TFF 0.87 has no ``federated_collect``, so the updates are gathered with
``tff.federated_aggregate``: each client's update (any structure of float
tensors) is flattened into one float32 row of length d (the total number of
elements), ``accumulate`` and ``merge`` concatenate rows into an [m, d]
matrix, and ``report`` computes the statistic and unflattens it back to the
update's structure, shapes and dtypes (float64 updates are therefore
aggregated in float32). The server holds m x d float32 values for the
round (m clients). Rows are in the order TFF hands the
clients to the aggregation; in the local runtime that is the order of the
client list (Krum's ties go to the lowest row).

Every process is stateless (state ``()``) and its measurements are a small
``OrderedDict`` placed at the server: ``num_updates`` (m, int32) for all,
``trimmed_per_side`` for the trimmed mean, and ``byzantine`` (the f used) and
``selected`` (int32 [multi], the rows chosen, -1 where fewer than ``multi``
updates came) for Krum. With no update at all the result is zero.

Non-finite values: NaN is treated as +inf when sorting coordinates and when
comparing Krum distances, so a minority of clients sending NaN cannot take
over the median, the trimmed mean or Krum's choice.

The same statistics on a NumPy array of shape (m, d) are :func:`coordinate_median`,
:func:`trimmed_mean` and :func:`krum` (with :func:`krum_scores` and
:func:`krum_selection`): reference implementations for checks by hand.

Importing this module does not import TensorFlow; building a process does.
"""

from __future__ import annotations

import collections
import math
import sys
from typing import Optional

import numpy as np

from ..core.runtime import tff

__all__ = [
    "CoordinateMedianFactory", "TrimmedMeanFactory", "KrumFactory",
    "coordinate_median", "trimmed_mean", "krum", "krum_scores", "krum_selection", "fraction_count",
    "krum_neighbours",
]

# floor(fraction * m) is computed as floor(fraction * m + _EPS) in float64, here and in the graph, so that
# e.g. 0.29 * 100 = 28.999999999999996 counts as 29.
_EPS = 1e-9


# --------------------------------------------------------------------------------------------------------------
# NumPy references
# --------------------------------------------------------------------------------------------------------------

def fraction_count(fraction: float, m: int) -> int:
    """floor(fraction * m), robust to the float rounding of the product (``fraction * m + 1e-9``)."""
    return int(math.floor(float(fraction) * m + _EPS))


def krum_neighbours(m: int, byzantine: int) -> int:
    """Krum's neighbour count n = m - f - 2, at least 1 (when m - f - 2 < 1) and at most m - 1 (0 for m = 1)."""
    return min(max(m - byzantine - 2, 1), max(m - 1, 0))


def _updates(updates) -> np.ndarray:
    a = np.asarray(updates, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"updates must have shape (m, d), got {a.shape}")
    if a.shape[0] == 0:
        raise ValueError("updates must hold at least one update (m >= 1)")
    return a


def _nan_as_inf(a: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(a), np.inf, a)


def _check_trim_fraction(trim_fraction: float) -> float:
    beta = float(trim_fraction)
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trim_fraction must be in [0, 0.5), got {trim_fraction!r}")
    return beta


def coordinate_median(updates) -> np.ndarray:
    """Coordinate-wise median of ``updates`` (shape (m, d)): shape (d,), float64.

    For an even m, the mean of the two middle values of each coordinate. NaN
    counts as +inf.
    """
    s = np.sort(_nan_as_inf(_updates(updates)), axis=0)
    m = s.shape[0]
    return 0.5 * s[(m - 1) // 2] + 0.5 * s[m // 2]


def trimmed_mean(updates, trim_fraction: float) -> np.ndarray:
    """Coordinate-wise beta-trimmed mean of ``updates`` (shape (m, d)), beta = ``trim_fraction`` in [0, 0.5).

    Per coordinate, drops the b = floor(beta * m) largest and the b smallest of
    the m values and averages the m - 2b left; if none would be left, the
    coordinate-wise median. NaN counts as +inf.
    """
    beta = _check_trim_fraction(trim_fraction)
    a = _updates(updates)
    m = a.shape[0]
    b = fraction_count(beta, m)
    if m - 2 * b < 1:
        return coordinate_median(a)
    return np.sort(_nan_as_inf(a), axis=0)[b:m - b].mean(axis=0)


def krum_scores(updates, byzantine: int) -> np.ndarray:
    """Krum score of every update (shape (m,)): the sum of its squared L2 distances to its n nearest others.

    n = m - f - 2 with f = ``byzantine``, or 1 when m - f - 2 < 1 (see
    :func:`krum_neighbours`). A NaN distance counts as +inf.
    """
    a = _updates(updates)
    m = a.shape[0]
    if int(byzantine) != byzantine or byzantine < 0:
        raise ValueError(f"byzantine must be an integer >= 0, got {byzantine!r}")
    n = krum_neighbours(m, int(byzantine))
    with np.errstate(invalid="ignore", over="ignore"):
        d2 = np.stack([np.sum((a - a[i]) ** 2, axis=1) for i in range(m)])
    d2 = _nan_as_inf(d2)
    np.fill_diagonal(d2, np.inf)  # an update is not its own neighbour
    return np.sort(d2, axis=1)[:, :n].sum(axis=1)


def krum_selection(updates, byzantine: int, multi: int = 1) -> np.ndarray:
    """Indices of the min(multi, m) lowest Krum scores, lowest first; equal scores in index order."""
    if int(multi) != multi or multi < 1:
        raise ValueError(f"multi must be an integer >= 1, got {multi!r}")
    scores = krum_scores(updates, byzantine)
    return np.argsort(scores, kind="stable")[:min(int(multi), scores.shape[0])]


def krum(updates, byzantine: int, multi: int = 1) -> np.ndarray:
    """Krum (``multi=1``: the update with the lowest score) or Multi-Krum (the mean of the ``multi`` lowest).

    ``updates`` has shape (m, d), ``byzantine`` is f, the number of Byzantine
    updates tolerated. Returns shape (d,), float64. See :func:`krum_scores`.
    """
    a = _updates(updates)
    return a[krum_selection(a, byzantine, multi)].mean(axis=0)


# --------------------------------------------------------------------------------------------------------------
# TFF factories
# --------------------------------------------------------------------------------------------------------------

def _leaf_types(value_type) -> list:
    """The TensorTypes of ``value_type`` in TFF's order of its structure."""
    t = tff()
    if isinstance(value_type, t.types.TensorType):
        return [value_type]
    if isinstance(value_type, t.types.StructType):
        return [leaf for _, element in t.structure.iter_elements(value_type) for leaf in _leaf_types(element)]
    raise TypeError(f"value_type must be a tensor or a structure of tensors, got {value_type!r}")


def _check_value_type(value_type) -> list:
    t = tff()
    if isinstance(value_type, t.types.FederatedType) or not isinstance(
            value_type, (t.types.TensorType, t.types.StructType)):
        raise TypeError(f"value_type must be a non-federated tensor or structure type, got {value_type!r}")
    leaves = _leaf_types(value_type)
    if not leaves:
        raise ValueError("value_type holds no tensor")
    for leaf in leaves:
        if not np.issubdtype(np.dtype(leaf.dtype), np.floating):
            raise TypeError(f"robust aggregators need float tensors, got {leaf!r} in {value_type!r}")
        if not t.types.is_shape_fully_defined(leaf.shape):
            raise TypeError(f"robust aggregators need fully defined shapes, got {leaf!r} in {value_type!r}")
    return leaves


def _count_in_graph(fraction: float, m):
    """floor(fraction * m + 1e-9) as an int32 tensor (``m`` an int32 tensor), as :func:`fraction_count`."""
    import tensorflow as tf

    product = tf.constant(float(fraction), tf.float64) * tf.cast(m, tf.float64) + _EPS
    return tf.cast(tf.floor(product), tf.int32)


def _sorted_columns(stack):
    import tensorflow as tf

    return tf.sort(tf.where(tf.math.is_nan(stack), tf.constant(np.inf, stack.dtype), stack), axis=0)


def _median_of_sorted(s, m):
    return 0.5 * s[(m - 1) // 2] + 0.5 * s[m // 2]  # halves first: no overflow near the float32 maximum


class _StackingFactory:
    """An unweighted factory whose statistic ``_report(stack)`` sees all m client updates as an [m, d] matrix.

    ``_report`` runs inside a TF graph with ``stack`` a float32 [None, d]
    tensor and ``m`` its (int32) number of rows, m >= 1; it returns the
    statistic (float32 [d]) and an OrderedDict of measurements (fixed shapes).
    ``_empty_measurements()`` gives the measurements for m = 0.
    """

    def _report(self, stack, m):
        raise NotImplementedError

    def _empty_measurements(self):
        raise NotImplementedError

    def create(self, value_type):
        t = tff()
        import tensorflow as tf

        leaves = _check_value_type(value_type)
        sizes = [int(np.prod(leaf.shape, dtype=np.int64)) for leaf in leaves]
        d = sum(sizes)
        stack_type = t.types.TensorType(np.float32, [None, d])
        is_tensor = isinstance(value_type, t.types.TensorType)

        def flatten(value):
            parts = [value] if is_tensor else t.structure.flatten(t.structure.from_container(value, recursive=True))
            return tf.concat([tf.reshape(tf.cast(part, tf.float32), [-1]) for part in parts], axis=0)

        def unflatten(vector):
            pieces = iter(tf.split(vector, sizes))
            return t.types.structure_from_tensor_type_tree(
                lambda leaf: tf.reshape(tf.cast(next(pieces), leaf.dtype), leaf.shape), value_type)

        @t.tensorflow.computation
        def zero():
            return tf.zeros([0, d], tf.float32)

        @t.tensorflow.computation(stack_type, value_type)
        def accumulate(stack, value):
            return tf.concat([stack, tf.reshape(flatten(value), [1, d])], axis=0)

        @t.tensorflow.computation(stack_type, stack_type)
        def merge(a, b):
            return tf.concat([a, b], axis=0)

        @t.tensorflow.computation(stack_type)
        def report(stack):
            m = tf.shape(stack, out_type=tf.int32)[0]
            empty = self._empty_measurements()

            def some():
                vector, measurements = self._report(stack, m)
                return tf.reshape(vector, [d]), measurements

            def none():
                return tf.zeros([d], tf.float32), empty

            vector, measurements = tf.cond(m > 0, some, none)
            measurements = collections.OrderedDict(
                (key, tf.ensure_shape(tf.convert_to_tensor(value), empty[key].shape))
                for key, value in measurements.items())
            return collections.OrderedDict(result=unflatten(vector), measurements=measurements)

        @t.federated_computation()
        def init_fn():
            return t.federated_value((), t.SERVER)

        @t.federated_computation(init_fn.type_signature.result, t.FederatedType(value_type, t.CLIENTS))
        def next_fn(state, value):
            out = t.federated_aggregate(value, zero(), accumulate, merge, report)
            return t.templates.MeasuredProcessOutput(state=state, result=out.result,
                                                     measurements=out.measurements)

        return t.templates.AggregationProcess(init_fn, next_fn)


def _register_with_tff() -> None:
    """Makes the factories subclasses of ``tff.aggregators.UnweightedAggregationFactory`` (an ``abc.ABC``).

    They are registered as virtual subclasses rather than declared as real
    ones so that importing this module does not import TensorFlow: this runs
    when a factory is made, and at import if TFF is already loaded.
    """
    base = tff().aggregators.UnweightedAggregationFactory
    for cls in (CoordinateMedianFactory, TrimmedMeanFactory, KrumFactory):
        if not issubclass(cls, base):
            base.register(cls)


class CoordinateMedianFactory(_StackingFactory):
    """Coordinate-wise median of the clients' updates (Yin et al. 2018, arXiv:1803.01498).

    For an even number m of updates, each coordinate is the mean of its two
    middle values. NaN counts as +inf. Measurements: ``num_updates`` (int32).
    Reference: :func:`coordinate_median`.
    """

    def __init__(self):
        _register_with_tff()

    def _report(self, stack, m):
        return _median_of_sorted(_sorted_columns(stack), m), collections.OrderedDict(num_updates=m)

    def _empty_measurements(self):
        import tensorflow as tf

        return collections.OrderedDict(num_updates=tf.constant(0, tf.int32))

    def __repr__(self):
        return "CoordinateMedianFactory()"


class TrimmedMeanFactory(_StackingFactory):
    """Coordinate-wise beta-trimmed mean of the clients' updates (Yin et al. 2018, arXiv:1803.01498).

    With m updates and beta = ``trim_fraction`` in [0, 0.5), each coordinate
    drops its b = floor(beta * m) largest and b smallest values (b computed
    from the round's actual m) and averages the rest; if none would be left,
    the coordinate-wise median. NaN counts as +inf. Measurements:
    ``num_updates`` and ``trimmed_per_side`` (b), int32. Reference:
    :func:`trimmed_mean`.
    """

    def __init__(self, trim_fraction: float):
        self.trim_fraction = _check_trim_fraction(trim_fraction)
        _register_with_tff()

    def _report(self, stack, m):
        import tensorflow as tf

        b = _count_in_graph(self.trim_fraction, m)
        s = _sorted_columns(stack)
        vector = tf.cond(m - 2 * b >= 1, lambda: tf.reduce_mean(s[b:m - b], axis=0),
                         lambda: _median_of_sorted(s, m))
        return vector, collections.OrderedDict(num_updates=m, trimmed_per_side=b)

    def _empty_measurements(self):
        import tensorflow as tf

        return collections.OrderedDict(num_updates=tf.constant(0, tf.int32), trimmed_per_side=tf.constant(0, tf.int32))

    def __repr__(self):
        return f"TrimmedMeanFactory(trim_fraction={self.trim_fraction!r})"


class KrumFactory(_StackingFactory):
    """Krum / Multi-Krum (Blanchard et al. 2017, NeurIPS; El Mhamdi et al. 2018, arXiv:1802.07927).

    The score of update i is the sum of the squared L2 distances to its
    n = m - f - 2 nearest other updates (n = 1 when m - f - 2 < 1, n = 0 for a
    single update). Krum (``multi=1``) returns the update with the lowest
    score; Multi-Krum (``multi=k > 1``) the mean of the k lowest-scoring
    updates (all m if m < k). Equal scores go to the lowest row, the order in
    which TFF gives the clients. A NaN distance counts as +inf.

    Give f either as ``byzantine`` (an int count) or as
    ``byzantine_fraction`` (a float in [0, 0.5)), then f = floor(fraction * m)
    from the round's actual m. Measurements: ``num_updates`` and ``byzantine``
    (f), int32, and ``selected``, the int32 [multi] rows chosen (best first,
    -1 where m < multi). Reference: :func:`krum`.
    """

    def __init__(self, byzantine: Optional[int] = None, multi: int = 1, *,
                 byzantine_fraction: Optional[float] = None):
        if (byzantine is None) == (byzantine_fraction is None):
            raise ValueError("give exactly one of byzantine (a count) and byzantine_fraction")
        if byzantine is not None and (isinstance(byzantine, bool) or int(byzantine) != byzantine or byzantine < 0):
            raise ValueError(f"byzantine must be an integer >= 0, got {byzantine!r}")
        if byzantine_fraction is not None and not 0.0 <= float(byzantine_fraction) < 0.5:
            raise ValueError(f"byzantine_fraction must be in [0, 0.5), got {byzantine_fraction!r}")
        if isinstance(multi, bool) or int(multi) != multi or multi < 1:
            raise ValueError(f"multi must be an integer >= 1, got {multi!r}")
        self.byzantine = None if byzantine is None else int(byzantine)
        self.byzantine_fraction = None if byzantine_fraction is None else float(byzantine_fraction)
        self.multi = int(multi)
        _register_with_tff()

    def byzantine_count(self, m: int) -> int:
        """f for a round of m updates."""
        return self.byzantine if self.byzantine is not None else fraction_count(self.byzantine_fraction, m)

    def _report(self, stack, m):
        import tensorflow as tf

        f = (tf.constant(self.byzantine, tf.int32) if self.byzantine is not None
             else _count_in_graph(self.byzantine_fraction, m))
        n = tf.minimum(tf.maximum(m - f - 2, 1), tf.maximum(m - 1, 0))
        d2 = tf.map_fn(lambda row: tf.reduce_sum(tf.square(stack - row), axis=1), stack,
                       fn_output_signature=tf.TensorSpec([None], tf.float32))  # m rows of m: no [m, m, d] tensor
        inf = tf.constant(np.inf, tf.float32)
        d2 = tf.where(tf.math.is_nan(d2), inf, d2)
        d2 = tf.linalg.set_diag(d2, tf.fill([m], inf))  # an update is not its own neighbour
        scores = tf.reduce_sum(tf.sort(d2, axis=1)[:, :n], axis=1)
        k = tf.minimum(self.multi, m)
        chosen = tf.argsort(scores, stable=True)[:k]
        vector = tf.reduce_mean(tf.gather(stack, chosen), axis=0)
        selected = tf.reshape(tf.pad(tf.cast(chosen, tf.int32), [[0, self.multi - k]], constant_values=-1),
                              [self.multi])
        return vector, collections.OrderedDict(num_updates=m, byzantine=f, selected=selected)

    def _empty_measurements(self):
        import tensorflow as tf

        return collections.OrderedDict(num_updates=tf.constant(0, tf.int32), byzantine=tf.constant(0, tf.int32),
                                       selected=tf.fill([self.multi], tf.constant(-1, tf.int32)))

    def __repr__(self):
        f = (f"byzantine={self.byzantine}" if self.byzantine is not None
             else f"byzantine_fraction={self.byzantine_fraction!r}")
        return f"KrumFactory({f}, multi={self.multi})"


if "tensorflow_federated" in sys.modules:
    _register_with_tff()
