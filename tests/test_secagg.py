"""fedlab.protection.secagg: SecAgg and SecAgg+ recover the exact modular sum, hide inputs, abort below t, count their cost."""

import itertools
import os

import numpy as np
import pytest

from fedlab.protection import secagg

PROTOCOLS = secagg.PROTOCOLS


def random_inputs(rng, ids, bits, length=16):
    return {u: rng.integers(0, 2 ** bits, size=length, dtype=np.uint64) for u in ids}


def modular_sum(inputs, bits):
    """The plain sum mod 2**bits, in Python integers (no wrap-around to trust)."""
    total = [sum(int(v[i]) for v in inputs.values()) % 2 ** bits for i in range(len(next(iter(inputs.values()))))]
    return np.array(total, dtype=np.uint64)


def group_size(protocol, n):
    return n if protocol == "secagg" else secagg.neighbours_for(n) + 1


# ----------------------------------------------------------------------------------------------------------------
# The sum


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("n", [2, 3, 10, 50])
@pytest.mark.parametrize("bits", [1, 8, 24, 32, 62])
def test_recovers_the_modular_sum_without_dropouts(protocol, n, bits):
    rng = np.random.default_rng(n * 100 + bits)
    inputs = random_inputs(rng, range(n), bits)
    result = secagg.run_protocol(inputs, modulus_bits=bits, protocol=protocol)
    assert result.total.dtype == np.uint64
    np.testing.assert_array_equal(result.total, modular_sum(inputs, bits))
    assert result.included == tuple(range(n))
    assert result.threshold == secagg.threshold_for(group_size(protocol, n))
    assert result.neighbours == (n - 1 if protocol == "secagg" else secagg.neighbours_for(n))


@pytest.mark.parametrize("n, bits", [(3, 8), (3, 62), (10, 8), (10, 62), (50, 24)])
def test_secagg_recovers_the_sum_with_up_to_n_minus_t_dropouts(n, bits):
    rng = np.random.default_rng(n + bits)
    t = secagg.threshold_for(n)
    ids = [int(u) for u in rng.permutation(1000)[:n]]          # ids need not be 0..n-1
    inputs = random_inputs(rng, ids, bits)
    for early, late in [(1, 0), (n - t, 0), (0, n - t), (max(0, n - t - 1), 1 if n - t >= 1 else 0)]:
        gone, stays = ids[:early], ids[early:]
        arrived = {u: inputs[u] for u in stays}
        result = secagg.run_protocol(arrived, modulus_bits=bits, participants=ids,
                                     dropped_after_input=stays[:late])
        # clients that dropped after sending their masked input still count; those before do not
        np.testing.assert_array_equal(result.total, modular_sum(arrived, bits))
        assert result.included == tuple(sorted(stays))
        assert not set(gone) & set(result.included)


@pytest.mark.parametrize("n", [10, 50])
def test_secagg_plus_recovers_the_sum_with_dropouts_it_is_built_for(n):
    # neighbours_for(n) survives round(0.3 n) random dropouts with probability >= 1 - 2**-10; seeds fixed
    rng = np.random.default_rng(n)
    inputs = random_inputs(rng, range(n), 24)
    dropped = rng.choice(n, size=round(0.3 * n), replace=False).tolist()
    for early, late in [(dropped, []), (dropped[:-1], dropped[-1:]), ([], dropped)]:
        arrived = {u: v for u, v in inputs.items() if u not in early}
        result = secagg.run_protocol(arrived, modulus_bits=24, protocol="secagg+", participants=range(n),
                                     dropped_after_input=late, graph_seed=3)
        np.testing.assert_array_equal(result.total, modular_sum(arrived, 24))
        assert result.included == tuple(sorted(arrived))


def test_each_client_sends_one_kind_of_share_per_client():
    rng = np.random.default_rng(0)
    inputs = random_inputs(rng, range(12), 16)
    arrived = {u: v for u, v in inputs.items() if u not in (3, 7)}
    _, server = secagg._simulate(arrived, modulus_bits=16, protocol="secagg", participants=range(12),
                                 dropped_after_input=(5,), graph_seed=0, threshold=None, neighbours=None)
    assert set(server.b_shares) == set(arrived)              # self-mask seeds of those whose input arrived
    assert set(server.s_shares) == {3, 7}                    # mask keys of those who dropped before
    for holder in server.responded:
        assert not any(holder in server.b_shares[o] and holder in server.s_shares.get(o, {})
                       for o in server.b_shares)


# ----------------------------------------------------------------------------------------------------------------
# What the server sees


def arrays_in(value, seen=None):
    """Every NumPy array reachable from ``value`` through attributes, mappings and sequences."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from arrays_in(item, seen)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from arrays_in(item, seen)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        yield from arrays_in(vars(value), seen)


def test_masked_vectors_look_uniform_and_the_server_holds_no_input():
    length, bits = 100_000, 8
    inputs = {0: np.zeros(length, np.uint64), 1: np.full(length, 7, np.uint64), 2: np.arange(length) % 256}
    result, server = secagg._simulate(inputs, modulus_bits=bits, protocol="secagg", participants=None,
                                      dropped_after_input=(), graph_seed=0, threshold=None, neighbours=None)
    np.testing.assert_array_equal(result.total, modular_sum(inputs, bits))
    expected = length / 2 ** bits
    for u, x in inputs.items():
        y = server.masked[u]
        assert not np.array_equal(y.astype(np.uint64), x)
        assert np.mean(y == x) < 0.01                         # 1/256 agree by chance
        counts = np.bincount(y.astype(np.int64), minlength=2 ** bits)
        chi2 = float(((counts - expected) ** 2 / expected).sum())
        assert chi2 < 255 + 6 * np.sqrt(2 * 255), f"client {u}'s masked values are not flat: chi2 {chi2:.0f}"
    held = list(arrays_in(server))
    assert held, "the walk found the masked vectors"
    for array in held:
        for x in inputs.values():
            assert not (array.shape == x.shape and np.array_equal(array.astype(np.uint64), x.astype(np.uint64)))


def test_pairwise_seed_is_the_same_from_both_sides():
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    ab = secagg._derive(a.exchange(b.public_key()), b"mask")
    ba = secagg._derive(b.exchange(a.public_key()), b"mask")
    assert ab == ba
    np.testing.assert_array_equal(secagg._prg(ab, 100, np.uint64), secagg._prg(ba, 100, np.uint64))
    assert secagg._derive(a.exchange(b.public_key()), b"channel") != ab


# ----------------------------------------------------------------------------------------------------------------
# Aborts


def test_too_many_dropouts_abort_with_a_one_line_message_and_t_survivors_suffice():
    rng = np.random.default_rng(1)
    inputs = random_inputs(rng, range(10), 12)
    t = secagg.threshold_for(10)
    assert t == 6
    six = {u: inputs[u] for u in range(4, 10)}
    result = secagg.run_protocol(six, modulus_bits=12, participants=range(10))
    np.testing.assert_array_equal(result.total, modular_sum(six, 12))
    seven = {u: inputs[u] for u in range(3, 10)}
    result = secagg.run_protocol(seven, modulus_bits=12, participants=range(10), dropped_after_input=[3])
    np.testing.assert_array_equal(result.total, modular_sum(seven, 12))

    five = {u: inputs[u] for u in range(5, 10)}
    with pytest.raises(secagg.SecAggAborted) as caught:
        secagg.run_protocol(five, modulus_bits=12, participants=range(10))
    assert str(caught.value) == ("secure aggregation stopped at masked input collection: "
                                 "5 of 10 clients remain, the threshold is 6")
    with pytest.raises(secagg.SecAggAborted) as caught:
        secagg.run_protocol(seven, modulus_bits=12, participants=range(10), dropped_after_input=[3, 4])
    assert str(caught.value) == "secure aggregation stopped at unmasking: 5 of 10 clients remain, the threshold is 6"
    assert "\n" not in str(caught.value)


def test_secagg_plus_aborts_when_a_neighbourhood_is_too_thin():
    n = 30
    rng = np.random.default_rng(2)
    inputs = random_inputs(rng, range(n), 10)
    k = secagg.neighbours_for(n)
    t = secagg.threshold_for(k + 1)
    graph = secagg._graph(list(range(n)), k, 0)
    # drop every neighbour of client 0 but t - 2: with client 0 itself, t - 1 holders of its b remain
    keep = sorted(graph[0])[:t - 2]
    gone = set(graph[0]) - set(keep)
    arrived = {u: v for u, v in inputs.items() if u not in gone}
    with pytest.raises(secagg.SecAggAborted, match=r"^secure aggregation stopped at masked input collection: "
                                                   r"\d+ of \d+ clients remain in the neighbourhood of client \d+, "
                                                   rf"the threshold is {t}$"):
        secagg.run_protocol(arrived, modulus_bits=10, protocol="secagg+", participants=range(n), graph_seed=0)


# ----------------------------------------------------------------------------------------------------------------
# Shamir


def test_any_t_shares_reconstruct_the_secret_and_t_minus_1_do_not():
    secret = os.urandom(32)
    xs, t = list(range(1, 11)), 6
    shares = secagg._shamir_split([secret], xs, t)
    assert shares.shape == (10, 9) and shares.min() >= 0 and shares.max() < secagg.PRIME
    chunks = secagg._to_chunks(secret)
    rng = np.random.default_rng(0)
    subsets = list(itertools.combinations(range(10), t))
    for pick in [subsets[i] for i in rng.choice(len(subsets), 20, replace=False)]:
        recovered = secagg._shamir_combine([xs[i] for i in pick], shares[list(pick)])
        assert secagg._from_chunks(recovered) == secret
    for pick in itertools.combinations(range(10), t - 1):
        recovered = secagg._shamir_combine([xs[i] for i in pick], shares[list(pick)])
        assert not np.array_equal(recovered, chunks)


def test_shamir_shares_two_secrets_at_once_with_many_holders():
    secrets = [os.urandom(32), bytes(32)]
    xs = list(range(1, 1001))
    shares = secagg._shamir_split(secrets, xs, 501)
    picked = list(range(499, 1000))
    recovered = secagg._shamir_combine([xs[i] for i in picked], shares[picked])
    assert secagg._from_chunks(recovered[:9]) == secrets[0]
    assert secagg._from_chunks(recovered[9:]) == secrets[1]


def test_exact_modular_matrix_product():
    rng = np.random.default_rng(3)
    a = rng.integers(0, secagg.PRIME, size=(4, 700), dtype=np.int64)
    b = rng.integers(0, secagg.PRIME, size=(700, 3), dtype=np.int64)
    exact = [[sum(int(a[i, j]) * int(b[j, c]) for j in range(700)) % secagg.PRIME for c in range(3)]
             for i in range(4)]
    np.testing.assert_array_equal(secagg._matmul_mod(a, b), np.array(exact))


# ----------------------------------------------------------------------------------------------------------------
# SecAgg+'s graph and the cost


@pytest.mark.parametrize("n", [4, 10, 57, 200])
def test_secagg_plus_neighbourhoods_have_k_members_and_are_symmetric(n):
    ids = list(range(100, 100 + n))
    k = secagg.neighbours_for(n)
    graph = secagg._graph(ids, k, 5)
    assert set(graph) == set(ids)
    for u, near in graph.items():
        assert len(near) == k and u not in near
        assert all(u in graph[v] for v in near)
    assert graph == secagg._graph(ids, k, 5)
    if k < n - 2:
        assert graph != secagg._graph(ids, k, 6)


def test_neighbours_and_threshold_formulas():
    for n in list(range(2, 120)) + [500, 1000, 10 ** 4, 10 ** 6]:
        k = secagg.neighbours_for(n)
        assert 1 <= k < n and (k % 2 == 0 or k == n - 1)
    assert secagg.neighbours_for(1000) < 1000 // 5
    assert secagg.neighbours_for(10 ** 6) < 2 * secagg.neighbours_for(1000)     # ~log n
    assert [secagg.threshold_for(g) for g in (2, 3, 4, 5, 10, 11)] == [2, 2, 3, 3, 6, 6]


def test_bytes_grow_linearly_for_secagg_and_slower_for_secagg_plus():
    rng = np.random.default_rng(4)

    def cost(protocol, n):
        return secagg.run_protocol(random_inputs(rng, range(n), 16, length=8), modulus_bits=16,
                                   protocol=protocol).bytes_per_client

    # SecAgg+'s k (12 at n = 20, 42 at 80) only turns logarithmic past ~50 clients: compare 50 with 200
    plain = {n: cost("secagg", n) for n in (20, 80)}
    plus = {n: cost("secagg+", n) for n in (50, 200)}
    assert 3.5 < plain[80] / plain[20] < 4.5
    assert plus[200] / plus[50] < 2.5
    assert plus[200] < plain[80]


def test_bytes_per_client_counts_the_messages():
    n, length, bits = 5, 10, 12
    result = secagg.run_protocol(random_inputs(np.random.default_rng(5), range(n), bits, length),
                                 modulus_bits=bits)
    others = n - 1
    keys = 64 + others * (4 + 64)
    ciphertexts = 2 * others * (4 + 12 + 80 + 16)
    vector = (length * bits + 7) // 8
    unmasking = others * 4 + n * (4 + 36)
    assert result.bytes_per_client == keys + ciphertexts + vector + unmasking
    assert result.client_seconds > 0 and result.server_seconds > 0


# ----------------------------------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize("change, argument", [
    (dict(modulus_bits=0), "modulus_bits"),
    (dict(modulus_bits=63), "modulus_bits"),
    (dict(inputs={0: np.array([0, 256]), 1: np.array([1, 2])}), "inputs"),
    (dict(inputs={0: np.array([0, -1]), 1: np.array([1, 2])}), "inputs"),
    (dict(inputs={0: np.array([0, 1, 2]), 1: np.array([1, 2])}), "inputs"),
    (dict(inputs={0: np.array([[0, 1]]), 1: np.array([[1, 2]])}), "inputs"),
    (dict(inputs={0: np.array([0.5, 1]), 1: np.array([1.0, 2])}), "inputs"),
    (dict(protocol="secagg++"), "protocol"),
    (dict(participants=[0, 2]), "inputs"),
    (dict(inputs={0: np.array([1, 2])}), "participants"),
    (dict(participants=[0, 0, 1]), "participants"),
    (dict(dropped_after_input=[7]), "dropped_after_input"),
    (dict(threshold=1), "threshold"),
    (dict(threshold=3), "threshold"),
    (dict(protocol="secagg", neighbours=1, participants=[0, 1, 2]), "neighbours"),
    (dict(protocol="secagg+", neighbours=3, participants=range(6)), "neighbours"),
])
def test_bad_arguments_raise_value_error_naming_the_argument(change, argument):
    kwargs = dict(inputs={0: np.array([0, 1]), 1: np.array([1, 255])}, modulus_bits=8)
    kwargs.update(change)
    inputs = kwargs.pop("inputs")
    with pytest.raises(ValueError, match=rf"^{argument}: ") as caught:
        secagg.run_protocol(inputs, **kwargs)
    assert "\n" not in str(caught.value)


def test_measure_cost_table():
    table = secagg.measure_cost(clients=(4, 6), dropout_rates=(0.0, 0.25), vector_length=8, modulus_bits=10)
    assert list(table.columns) == ["protocol", "clients", "dropout_rate", "vector_length", "modulus_bits",
                                   "threshold", "neighbours", "bytes_per_client", "client_seconds",
                                   "server_seconds"]
    assert len(table) == 8
    assert set(table.protocol) == set(PROTOCOLS)
    plain = table[table.protocol == "secagg"]
    assert (plain.neighbours == plain.clients - 1).all()
    assert (table.bytes_per_client > 0).all() and (table.server_seconds > 0).all()


def test_the_cost_table_of_several_seeds_spread_over_processes_is_the_table_of_each_seed_in_order():
    import pandas as pd

    kw = dict(clients=(5, 12), dropout_rates=(0.0, 0.25), vector_length=300, modulus_bits=20)
    one_by_one = pd.concat([secagg.measure_cost(**kw, seed=s).assign(seed=s) for s in (3, 4)], ignore_index=True)
    spread = secagg.measure_cost(**kw, seeds=(3, 4), processes=2)
    fixed = [c for c in one_by_one.columns if not c.endswith("_seconds")]
    assert list(spread.columns) == list(one_by_one.columns)  # seed last, as the notebook's table had it
    assert spread[fixed].equals(one_by_one[fixed])  # the same rows in the same order
    assert (spread[["client_seconds", "server_seconds"]] > 0).all().all()
    with pytest.raises(ValueError, match="^processes: must be >= 1, got 0$"):
        secagg.measure_cost(**kw, processes=0)


def test_a_spread_cost_measurement_that_fails_says_which_run_and_stops_its_workers(monkeypatch):
    import multiprocessing

    with pytest.raises(ValueError, match="^seeds: must name at least one seed, got none$"):
        secagg.measure_cost(clients=(4,), seeds=[])
    # a worker's run that fails: its error here, naming it, the other workers stopped
    with pytest.raises(ValueError, match="^participants: must be 2..1048576 clients, got 1$"):
        secagg._spread_cost([(0, 4, 0.0, "secagg"), (0, 1, 0.0, "secagg"), (0, 5, 0.0, "secagg")], (8, 10, None), 2)
    assert not multiprocessing.active_children()


def test_spread_cost_runs_start_costliest_first_and_come_back_in_order(monkeypatch):
    """The runs go to the worker processes by their pairs of neighbours, largest first (so no core is left with a
    long run at the end), one per protocol, and the rows come back in the order asked."""
    import concurrent.futures

    started = []

    class InOrder:  # a pool that runs each job as it is submitted, recording the order
        def __init__(self, workers, mp_context=None, initializer=None):
            pass

        def submit(self, fn, *args):
            started.append(args[:4])
            future = concurrent.futures.Future()
            future.set_result(fn(*args))
            return future

        def shutdown(self, wait, cancel_futures):
            pass

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InOrder)
    runs = [(0, 5, 0.0, "secagg+"), (0, 30, 0.0, "secagg+"), (0, 10, 0.0, "secagg"), (0, 30, 0.0, "secagg")]
    rows = secagg._spread_cost(runs, (8, 10, None), 2)
    assert secagg.neighbours_for(30) < 29  # SecAgg+ has fewer pairs at 30 clients than SecAgg
    assert started == [runs[3], runs[1], runs[2], runs[0]]  # 30 x 29, 30 x k, 10 x 9, 5 x 4 pairs
    assert [(r["clients"], r["protocol"]) for r in rows] == [(n, p) for _, n, _, p in runs]


# ----------------------------------------------------------------------------------------------------------------
# The cost measurement's untimed clients, computed together


def together_run(n, members, *, bits=16, length=40, before=(), after=(), protocol="secagg", seed=0):
    """run_parties with ``members`` as _TogetherClient and the others as _Client; ``before``/``after``: clients that
    drop out before sending their input / before unmasking. Returns (inputs that arrived, result, server, parties)."""
    rng = np.random.default_rng(seed)
    inputs = {u: v for u, v in random_inputs(rng, range(n), bits, length).items() if u not in before}
    setup, values, late = secagg._validate(inputs, bits, protocol, range(n), after, 0, None, None)
    parties = secagg._parties(setup, values, late, secagg._Together(members))
    result, server = secagg.run_parties(setup, parties)
    return inputs, result, server, parties


def masked_as_the_protocol_says(party, x, inbox, setup):
    """y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv) mod R, from the client's own secrets."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    client = getattr(party, "_client", party)
    y = x.astype(np.uint64) + secagg._prg(client._b, setup.length, setup.dtype).astype(np.uint64)
    for v in inbox:
        shared = client._mask_sk.exchange(X25519PublicKey.from_public_bytes(client._mask_pks[v]))
        mask = secagg._prg(secagg._derive(shared, b"mask"), setup.length, setup.dtype).astype(np.uint64)
        y = y + mask if v > client.id else y - mask
    return y % np.uint64(2 ** setup.modulus_bits)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("members", [range(14), [0, 1, 2, 5, 6, 9, 10, 11, 13], [4, 7]])
def test_untimed_clients_send_the_protocols_masked_vector_but_for_the_masks_that_cancel(protocol, members):
    """Clients computed together send the masked vector the protocol defines, but for the mask each shares with
    another member that sends its input (both leave it out: it cancels in the sum), with dropouts before and after
    their input among them and among the timed clients; the sum is exact, every message has the protocol's size."""
    before, after = (2, 8), (6, 3)
    inputs, result, server, parties = together_run(14, members, before=before, after=after, protocol=protocol)
    np.testing.assert_array_equal(result.total, modular_sum(inputs, 16))
    assert set(server.masked) == set(inputs)
    cancelling = set(members) & set(inputs)
    for u in inputs:
        inbox = parties[u]._client._inbox if hasattr(parties[u], "_client") else parties[u]._inbox
        assert set(inbox) == set(server._setup.graph[u])  # every neighbour shared its keys (dropouts came later)
        kept = [v for v in inbox if not (u in cancelling and v in cancelling)]
        np.testing.assert_array_equal(server.masked[u].astype(np.uint64),
                                      masked_as_the_protocol_says(parties[u], inputs[u], kept, server._setup))
    first = parties[list(members)[0]]
    together = getattr(first, "_client", first)._together
    assert not together.channel_keys and not together.left_out  # each pair's second side took what the first left
    _, alone, alone_server, _ = together_run(14, (), before=before, after=after, protocol=protocol)
    assert result.bytes_per_client == alone.bytes_per_client
    for receiver, mail in server._mail.items():  # the key shares' ciphertexts, sender by sender: the same sizes
        assert {u: len(m) for u, m in mail.items()} == {u: len(m) for u, m in alone_server._mail[receiver].items()}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_two_untimed_clients_agree_no_secret_only_they_use(monkeypatch, protocol):
    """Two members draw their channel key and leave out the mask both would add; a mask with a timed client or a
    member that drops out before its input is agreed (and recomputed by the server for a dropped one)."""
    agreed = {b"channel": 0, b"mask": 0}
    derive = secagg._derive

    def counting(shared, purpose):
        agreed[purpose] += 1
        return derive(shared, purpose)

    monkeypatch.setattr(secagg, "_derive", counting)
    n = 12
    graph = together_run(n, range(n), protocol=protocol)[2]._setup.graph
    assert agreed == {b"channel": 0, b"mask": 0}
    sides = sum(len(neighbours) for neighbours in graph.values())  # each pair of neighbours counted from both sides
    assert sides == n * (n - 1) if protocol == "secagg" else sides < n * (n - 1)
    agreed.update({b"channel": 0, b"mask": 0})
    together_run(n, (), protocol=protocol)  # every client on its own: each side agrees its own
    assert agreed == {b"channel": sides, b"mask": sides}
    agreed.update({b"channel": 0, b"mask": 0})
    together_run(n, range(8), protocol=protocol)  # 8 together, 4 timed: two members agree nothing
    member_sides = sum(len(graph[u] & set(range(8))) for u in range(8))
    assert agreed == {b"channel": sides - member_sides, b"mask": sides - member_sides}
    agreed.update({b"channel": 0, b"mask": 0})
    dropped = (2, 8)  # the others send: each masks with its dropped neighbours, the server recomputes those masks
    together_run(n, range(n), before=dropped, protocol=protocol)
    assert agreed == {b"channel": 0, b"mask": 2 * sum(len(graph[d] - set(dropped)) for d in dropped)} != {
        b"channel": 0, b"mask": 0}


def test_untimed_clients_are_left_out_of_the_client_seconds():
    _, result, _, parties = together_run(6, [0, 1, 2, 3])
    timed = [parties[u].seconds for u in (4, 5)]
    assert all(parties[u].seconds > 0 for u in range(6))
    assert result.client_seconds == pytest.approx(float(np.mean(timed)))


def test_the_cost_of_a_few_timed_clients_stands_for_their_group(monkeypatch):
    """With ``timed_clients``, each group (clients whose input arrived, clients that dropped out) has that many
    timed, and the client seconds are the mean over all clients with each group's timed mean standing for it; the
    table but for its seconds is the table with every client timed."""
    kw = dict(clients=(10, 20), dropout_rates=(0.0, 0.3), vector_length=50, modulus_bits=12, seeds=(0, 1))
    every = secagg.measure_cost(**kw, timed_clients=None)
    few = secagg.measure_cost(**kw, timed_clients=2)
    fixed = [c for c in every.columns if not c.endswith("_seconds")]
    assert few[fixed].equals(every[fixed])
    assert (few.client_seconds > 0).all() and (few.server_seconds > 0).all()

    run_parties, seen = secagg.run_parties, []

    def fixed_seconds(setup, parties):  # the timed clients' seconds set: 2 s if their input arrived, 1 s if not
        result = run_parties(setup, parties)
        for party in parties.values():
            if party.timed:
                client = getattr(party, "_client", party)
                client.seconds = 1.0 if isinstance(party, secagg._DropsOut) else 2.0
        seen.append(sum(party.timed for party in parties.values()))
        return result

    monkeypatch.setattr(secagg, "run_parties", fixed_seconds)
    row = secagg._cost_row(0, 20, 0.3, "secagg", 50, 12, 2)
    assert seen == [4]  # two of the 14 whose input arrived, two of the 6 that dropped out
    assert row["client_seconds"] == pytest.approx((14 * 2.0 + 6 * 1.0) / 20)
    with pytest.raises(ValueError, match="^timed_clients: must be >= 1, got 0$"):
        secagg.measure_cost(clients=(4,), timed_clients=0)
