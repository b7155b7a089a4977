import numpy as np
import pytest

from fedlab.data.partition import (
    DirichletPartitioner,
    IidPartitioner,
    NaturalPartitioner,
    QuantitySkewPartitioner,
    ShardPartitioner,
    _largest_remainder,
    add_feature_noise,
    partition_report,
)

LABELS = np.repeat(np.arange(10), 100)  # 1,000 examples, 100 of each label

ALL = [
    IidPartitioner(20, seed=1),
    DirichletPartitioner(20, alpha=0.3, seed=1),
    ShardPartitioner(20, shards_per_client=2, seed=1),
    QuantitySkewPartitioner(20, alpha=0.5, seed=1),
]


@pytest.mark.parametrize("partitioner", ALL, ids=lambda p: type(p).__name__)
def test_every_example_exactly_once(partitioner):
    parts = partitioner.partition(LABELS)
    assert len(parts) == 20
    assert all(len(p) > 0 for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


@pytest.mark.parametrize("partitioner", ALL, ids=lambda p: type(p).__name__)
def test_same_seed_same_partition_other_seed_other(partitioner):
    a = partitioner.partition(LABELS)
    b = partitioner.partition(LABELS)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    other = type(partitioner)(**{**vars(partitioner), "seed": 2}).partition(LABELS)
    assert not all(np.array_equal(x, y) for x, y in zip(a, other))


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in IidPartitioner(7, seed=0).partition(LABELS)]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == 1000


@pytest.mark.parametrize("k", [1, 2, 3])
def test_shards_give_at_most_k_labels(k):
    parts = ShardPartitioner(50, shards_per_client=k, seed=0).partition(LABELS)
    assert max(len(np.unique(LABELS[p])) for p in parts) <= k
    # 50*k shards over 100 examples per class: each shard holds floor or ceil of 1000/(50k).
    low, high = k * (1000 // (50 * k)), k * -(-1000 // (50 * k))
    assert all(low <= len(p) <= high for p in parts)


def _mean_tv_from_global(parts):
    """Mean total-variation distance between each client's label mix and the global one (uniform)."""
    tv = []
    for p in parts:
        mix = np.bincount(LABELS[p], minlength=10) / len(p)
        tv.append(0.5 * np.abs(mix - 0.1).sum())
    return float(np.mean(tv))


def test_dirichlet_large_alpha_is_close_to_iid_small_alpha_is_not():
    iid = _mean_tv_from_global(IidPartitioner(10, seed=0).partition(LABELS))
    big = _mean_tv_from_global(DirichletPartitioner(10, alpha=1000.0, seed=0).partition(LABELS))
    small = _mean_tv_from_global(DirichletPartitioner(10, alpha=0.05, seed=0).partition(LABELS))
    # A random IID split of 100 examples per client is itself ~0.12 from uniform.
    assert big < 0.1 and big <= iid + 0.02
    assert small > 0.6


def test_dirichlet_impossible_request_says_so():
    with pytest.raises(ValueError, match="alpha"):
        DirichletPartitioner(500, alpha=0.01, seed=0, max_tries=3).partition(LABELS)


def test_quantity_skew_keeps_labels_iid_but_sizes_skewed():
    parts = QuantitySkewPartitioner(10, alpha=0.2, seed=0).partition(LABELS)
    sizes = np.array([len(p) for p in parts])
    assert sizes.min() >= 1 and sizes.sum() == 1000
    assert sizes.max() / sizes.min() > 5


def test_natural_partition_by_site():
    sites = np.array([0, 0, 1, 2, 1, 0])
    parts = NaturalPartitioner(sites).partition(np.zeros(6))
    assert [p.tolist() for p in parts] == [[0, 1, 5], [2, 4], [3]]


def test_largest_remainder_by_hand():
    # 10 split 1:1:1 -> 3.33 each; the first gets the leftover one.
    assert _largest_remainder(np.array([1, 1, 1]), 10).tolist() == [4, 3, 3]
    # 7 split 0.5:0.3:0.2 -> 3.5, 2.1, 1.4 -> floors 3,2,1 (6); largest remainder 0.5 -> [4,2,1]
    assert _largest_remainder(np.array([0.5, 0.3, 0.2]), 7).tolist() == [4, 2, 1]


def test_partition_report_counts():
    labels = np.array([0, 1, 1, 2])
    report = partition_report(labels, [np.array([0, 1]), np.array([2, 3])], num_classes=3)
    table = report.pivot(index="client", columns="label", values="count")
    assert table.values.tolist() == [[1, 1, 0], [0, 1, 1]]


def test_too_many_clients_for_data():
    with pytest.raises(ValueError, match="num_clients"):
        IidPartitioner(11, seed=0).partition(np.zeros(10))


def test_feature_noise_grows_linearly_over_clients():
    x = [np.zeros((20000, 1), np.float32) for _ in range(5)]
    noisy = add_feature_noise(x, 2.0, seed=0)
    stds = [float(a.std()) for a in noisy]
    # client i of 5 gets std 2 * i / 4: 0, 0.5, 1, 1.5, 2
    np.testing.assert_allclose(stds, [0.0, 0.5, 1.0, 1.5, 2.0], atol=0.03)
    assert add_feature_noise(x, 0.0) == x
    again = add_feature_noise(x, 2.0, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(noisy, again))
