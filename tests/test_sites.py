"""Hospitals as processes that keep their records (issue #35): site processes, a driver without data.

Four site processes (``python -m fedlab site``) on loopback ports hold the four UCI hospitals; the driver
runs the federation against them and must give the simulation's numbers within float32 summation order.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fedlab import ExperimentConfig, run_experiment
from fedlab.workers.certs import make_certs
from fedlab.workers.distributed import WorkerTLS, use_worker_tls
from fedlab.experiment.runner import final_weights
from fedlab.data.site_data import load_site
from fedlab.experiment.site_service import LocalSites
from fedlab.experiment.sites import SiteLostError, SiteUnreachableError, parse_sites
from fedlab.core.validation import ConfigError, FedlabWarning

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("sites")]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.environ.get("FEDLAB_HEART_DISEASE_DIR", os.path.join(ROOT, "..", "shared", "data", "heart_disease"))
NAMES = ["cleveland", "hungarian", "switzerland", "va"]
BASE = ExperimentConfig(dataset="heart_disease", partition="natural", num_clients=4, clients_per_round=4, rounds=3,
                        local_epochs=1, batch_size=16)
SCORES = ["train_loss", "eval_loss", "eval_accuracy", "mean_site_accuracy", "mean_site_balanced_accuracy",
          "mean_site_auc"] + [f"site_auc_{n}" for n in NAMES]


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    from fedlab.protection.ckks import write_keys

    secret, _ = write_keys(tmp_path_factory.mktemp("ckks"))  # the sites' shared CKKS secret; the driver gets none
    # --reproducible: the sites take the run's seeds for DP-SGD's noise and CKKS's encryption, so that a federation
    # can equal the simulation (a site refuses them otherwise: test_a_site_refuses_randomness_the_driver_knows)
    with LocalSites(NAMES, data=DATA, ckks_secret=secret, reproducible=True) as running:
        yield running


def assert_same_numbers(simulated, federated, columns=SCORES):
    """Equal within float32 summation order: the driver sums the sites' updates in another order than TFF."""
    assert list(simulated["round"]) == list(federated["round"])
    np.testing.assert_allclose(federated[columns].to_numpy(float), simulated[columns].to_numpy(float),
                               rtol=0, atol=1e-6)
    for a, b in zip(final_weights(simulated), final_weights(federated)):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)


def test_a_site_makes_the_arrays_the_simulation_gives_its_client():
    from fedlab.experiment.clients import dataset_for

    data = dataset_for(BASE.replace(data_seed=3))
    for index, name in enumerate(NAMES):
        own = load_site("heart_disease", name, DATA, seed=3, test_fraction=None).data
        rows = data.train_sites == index
        np.testing.assert_array_equal(own.x_train, data.x_train[rows])
        np.testing.assert_array_equal(own.y_train, data.y_train[rows])
        np.testing.assert_array_equal(own.x_test, data.x_test[data.test_sites == index])


@pytest.mark.parametrize("changes", [
    {},
    {"algorithm": "fedadam", "dp": "fixed", "noise_multiplier": 0.5, "clip_norm": 1.0},
    {"dp": "example", "noise_multiplier": 1.0, "clip_norm": 1.0},
    {"algorithm": "fedprox", "device_profile": "fedscale", "straggler_policy": "partial", "round_deadline": 20.0,
     "dropout_rate": 0.2, "robust": "median"},
    {"model": "2nn", "freeze_layers": 1},
], ids=["fedavg", "dp-fedadam", "dp-sgd", "fedprox-systems-median", "2nn-first-layer-frozen"])
def test_sites_give_the_simulations_numbers(sites, changes, monkeypatch):
    config = BASE.replace(**changes)
    simulated = run_experiment(config, progress=False)
    no_client_work_in_the_driver(monkeypatch)
    federated = run_experiment(config, sites=sites.addresses, progress=False)
    columns = [c for c in SCORES if not (config.dp == "example" and c == "train_loss")]  # DP-SGD releases none
    assert_same_numbers(simulated, federated, columns)
    assert federated["epsilon"].equals(simulated["epsilon"]) if "epsilon" in simulated else True
    assert federated["sim_elapsed_seconds"].equals(simulated["sim_elapsed_seconds"])


def no_client_work_in_the_driver(monkeypatch):
    """Every client computation of the split (and secure protocol) and CKKS rounds packs its clients' inputs
    first: in the driver that must never happen (it holds no inputs; it would train or encode a client itself)."""
    from fedlab.rounds import array_training, homomorphic_rounds, split_rounds

    def never(*args, **kwargs):
        raise AssertionError("the driver packed client inputs: it trained or encoded a client itself")

    for module in (array_training, split_rounds, homomorphic_rounds):
        monkeypatch.setattr(module, "pack_clients", never)


def test_secagg_runs_its_client_role_in_the_sites(sites, monkeypatch):
    config = BASE.replace(secure_aggregation=True, secure_protocol="secaggplus", quantization_bits=8,
                          device_profile="fedscale", dropout_rate=0.2)
    simulated = run_experiment(config, progress=False)
    no_client_work_in_the_driver(monkeypatch)
    federated = run_experiment(config, sites=sites.addresses, progress=False)
    assert_same_numbers(simulated, federated)
    for column in ("secagg_participants", "secagg_included", "secagg_aborted", "secagg_bytes_per_client"):
        assert federated[column].equals(simulated[column]), column
    assert federated["secagg_included"].max() == 4


def test_ckks_keeps_the_secret_key_at_the_sites(sites, monkeypatch):
    from fedlab.rounds import homomorphic_rounds

    config = BASE.replace(secure_aggregation=True, secure_protocol="ckks", device_profile="fedscale",
                          dropout_rate=0.2)
    simulated = run_experiment(config, progress=False)

    def no_key():
        raise AssertionError("the driver made or read a CKKS secret key")

    monkeypatch.setattr(homomorphic_rounds, "_keys", no_key)
    no_client_work_in_the_driver(monkeypatch)
    federated = run_experiment(config, sites=sites.addresses, progress=False)
    # seeded encryption: the decrypted mean is the simulation's bit for bit, whoever holds the key
    assert_same_numbers(simulated, federated)
    assert federated["secagg_included"].equals(simulated["secagg_included"])


def test_a_lost_site_is_left_out_when_the_policy_drops_late_clients(sites):
    config = BASE.replace(straggler_policy="drop", round_deadline=1e6)

    def kill_after_round_1(row, history):
        if row["round"] == 1:
            sites.kill("switzerland")

    try:
        with pytest.warns(FedlabWarning, match="round 2: site 'switzerland' .* stopped answering"):
            history = run_experiment(config, sites=sites.addresses, progress=False, callback=kill_after_round_1)
    finally:
        sites.restart("switzerland")
    assert list(history["sites_evaluated"]) == [4, 3, 3]
    assert history["eval_loss"].notna().all()


def test_a_driver_without_any_data_path_runs_the_federation(sites, tmp_path):
    """The driver process gets no data folder at all (the loader would have nothing to read, and no network)."""
    env = {k: v for k, v in os.environ.items() if k != "FEDLAB_HEART_DISEASE_DIR"}
    env["FEDLAB_HEART_DISEASE_DIR"] = str(tmp_path / "no-data-here")
    pairs = ",".join(f"{n}={a}" for n, a in sites.addresses.items())
    proc = subprocess.run([sys.executable, "-m", "fedlab", "run", "--dataset", "heart_disease", "--partition",
                           "natural", "--num-clients", "4", "--clients-per-round", "4", "--rounds", "3",
                           "--local-epochs", "1", "--batch-size", "16", "--sites", pairs, "--quiet",
                           "--out", str(tmp_path / "out")],
                          cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (tmp_path / "no-data-here").exists()
    import pandas as pd

    federated = pd.read_csv(tmp_path / "out" / "history.csv")
    simulated = run_experiment(BASE, progress=False)
    np.testing.assert_allclose(federated[SCORES].to_numpy(float), simulated[SCORES].to_numpy(float), atol=1e-6)


def test_a_site_killed_mid_run_stops_it_and_the_restarted_site_resumes(sites, tmp_path):
    config = BASE.replace(rounds=4)

    def kill_after_round_2(row, history):
        if row["round"] == 2:
            sites.kill("hungarian")

    try:
        with pytest.raises(SiteLostError, match=r"site 'hungarian' .* stopped answering.*round 3.*holds rounds 1-2"):
            run_experiment(config, sites=sites.addresses, checkpoint_dir=tmp_path, progress=False,
                           callback=kill_after_round_2)
    finally:
        sites.restart("hungarian")
    resumed = run_experiment(config, sites=sites.addresses, checkpoint_dir=tmp_path, progress=False)
    assert_same_numbers(run_experiment(config, progress=False), resumed)


def test_a_site_that_dies_during_secure_aggregation_is_a_dropout(sites):
    config = BASE.replace(rounds=3, secure_aggregation=True, secure_protocol="secagg", quantization_bits=8)

    def kill_after_round_1(row, history):
        if row["round"] == 1:
            sites.kill("va")

    try:
        with pytest.warns(FedlabWarning, match="site.s. va did not answer the evaluation"):
            history = run_experiment(config, sites=sites.addresses, progress=False, callback=kill_after_round_1)
    finally:
        sites.restart("va")
    # the protocol goes on without it (threshold 3 of 4): the model still moves, the sum is of 3
    assert list(history["secagg_included"]) == [4, 3, 3]
    assert list(history["secagg_aborted"]) == [0, 0, 0]
    assert list(history["sites_evaluated"]) == [4, 3, 3]
    assert history["site_accuracy_va"].isna().tolist() == [False, True, True]
    assert history["eval_loss"].iloc[-1] != history["eval_loss"].iloc[0]


def test_a_site_down_at_start_is_named_in_one_line(sites):
    from fedlab.core.ports import free_port

    addresses = {**sites.addresses, "va": f"127.0.0.1:{free_port()}"}
    with pytest.raises(SiteUnreachableError, match=r"^site 'va' at 127\.0\.0\.1:\d+: no site answered") as err:
        run_experiment(BASE, sites=addresses, progress=False)
    assert "\n" not in str(err.value)


def test_a_driver_whose_certificate_the_sites_ca_did_not_sign_is_refused(tmp_path):
    site_certs, other_certs = make_certs(tmp_path / "site"), make_certs(tmp_path / "other")
    server = WorkerTLS.load(site_certs["server.pem"], site_certs["server-key.pem"], site_certs["ca.pem"])
    with LocalSites(["cleveland"], data=DATA, tls=server) as one:
        from fedlab.experiment.sites import Federation

        previous = use_worker_tls(other_certs["client.pem"], other_certs["client-key.pem"], site_certs["ca.pem"])
        try:
            link = Federation(one.addresses).links[0]
            assert not link.ready(3.0)
            assert "TLS handshake failed" in link.unreachable_message(3.0)
            use_worker_tls(site_certs["client.pem"], site_certs["client-key.pem"], site_certs["ca.pem"])
            link = Federation(one.addresses).links[0]
            header, _ = link.call("Describe", {"config": BASE.to_json()})
            assert header["site"] == "cleveland" and header["train_rows"] == 202
        finally:
            use_worker_tls(previous)


def test_bad_sites_are_refused_in_one_line_before_any_call():
    assert parse_sites("a=h:1, b=h:2") == {"a": "h:1", "b": "h:2"}
    for bad, words in [("a", "name=host:port"), ("a=h:0", "1..65535"), ("a=h:1,a=h:2", "twice"),
                       ("a=h:1,b=h:1", "same address"), ("", "no site")]:
        with pytest.raises(ValueError, match=words):
            parse_sites(bad)
    for changes, field in [({"algorithm": "scaffold"}, "algorithm"), ({"partition": "iid"}, "partition"),
                           ({"secure_aggregation": True}, "secure_aggregation"),
                           ({"attacker_fraction": 0.25}, "attacker_fraction"),
                           ({"dp": "fixed", "noise_multiplier": 1.0, "secure_aggregation": True,
                             "secure_protocol": "secagg", "quantization_bits": 8}, "dp")]:
        with pytest.raises(ConfigError, match=field):
            run_experiment(BASE.replace(**changes), sites={"a": "127.0.0.1:1"}, progress=False)
    proc = subprocess.run([sys.executable, "-m", "fedlab", "run", "--sites", "cleveland", "--out", "/tmp/x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--sites" in proc.stderr, proc.stderr
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        from fedlab.core.ports import free_port

        free = str(free_port())
        for args, words in [(["--name", "nowhere", "--port", free], "cleveland"),
                            (["--name", "va", "--port", free, "--host", "0.0.0.0"], "--host: 0.0.0.0 is reachable"),
                            (["--name", "va", "--port", port], f"--port: {port} is already in use")]:
            proc = subprocess.run([sys.executable, "-m", "fedlab", "site", "--data", DATA, *args], cwd=ROOT,
                                  capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr


def test_a_site_tells_its_size_and_label_balance_never_a_record(sites):
    from fedlab.experiment.sites import Federation

    federation = Federation(sites.addresses)
    federation.connect(BASE)
    assert federation.names == NAMES
    assert federation.sizes == [202, 174, 31, 86]
    info = federation.infos[0]
    assert set(info) == {"dataset", "site", "index", "site_names", "train_rows", "test_rows", "features",
                         "num_classes", "task", "label_counts", "image_shape"}
    assert json.loads(json.dumps(info)) == info  # numbers and names only
    federation.close()


def test_a_users_site_loader_is_found_like_fedlabs(tmp_path):
    import fedlab as fl
    from fedlab.data.data import Dataset
    from fedlab.data.site_data import SiteData

    (tmp_path / "north.csv").write_text("1.0,2.0,1\n3.0,4.0,0\n5.0,6.0,1\n")

    @fl.register_site_loader("heart_disease_csv_test", sites=("north", "south"))
    def read_csv_site(site, directory, *, seed, test_fraction):
        table = np.loadtxt(directory / f"{site}.csv", delimiter=",", dtype=np.float32)
        return SiteData(Dataset("heart_disease_csv_test", table[:2, :2], table[:2, 2].astype(np.int32),
                                table[2:, :2], table[2:, 2].astype(np.int32), num_classes=2,
                                site_names=("north", "south")), 0, site)

    try:
        fl.register_dataset("heart_disease_csv_test", sites=2)(lambda *, seed, test_fraction: None)
        site = load_site("heart_disease_csv_test", "north", tmp_path, seed=0, test_fraction=None)
        assert site.describe()["train_rows"] == 2 and site.describe()["label_counts"] == {"0": 1, "1": 1}
        with pytest.raises(ConfigError, match="north, south"):
            load_site("heart_disease_csv_test", "east", tmp_path, seed=0, test_fraction=None)
    finally:
        from fedlab.data.data import DATASETS
        from fedlab.data.site_data import SITE_LOADERS

        SITE_LOADERS._entries.pop("heart_disease_csv_test", None)
        DATASETS._entries.pop("heart_disease_csv_test", None)


def test_a_site_refuses_randomness_the_driver_knows():
    from fedlab.experiment.site_service import Site, SiteRefusal

    site = Site("heart_disease", "cleveland", DATA)  # no --reproducible
    for changes in ({"dp": "example", "noise_multiplier": 1.0, "clip_norm": 1.0},
                    {"secure_aggregation": True, "secure_protocol": "ckks"}):
        with pytest.raises(SiteRefusal, match="noise_source='seeded' .* the driver knows .* --reproducible"):
            site._config({"config": BASE.replace(**changes).to_json()})
        site._config({"config": BASE.replace(noise_source="unseeded", **changes).to_json()})  # fresh randomness
    central = {"dp": "fixed", "noise_multiplier": 0.5}  # the driver's noise: a site knowing its seed could remove it
    with pytest.raises(SiteRefusal, match="noise_source='seeded' .* seeds this site reads .* --reproducible"):
        site._config({"config": BASE.replace(**central).to_json()})
    site._config({"config": BASE.replace(noise_source="unseeded", **central).to_json()})
    site._config({"config": BASE.replace(dp="fixed", noise_multiplier=0.0).to_json()})  # no noise to remove
    Site("heart_disease", "cleveland", DATA, reproducible=True)._config({"config": BASE.replace(**central).to_json()})
    with pytest.raises(SiteRefusal, match="holds 'heart_disease' data"):
        site._config({"config": BASE.replace(dataset="fed_tcga_brca", num_clients=6, clients_per_round=6).to_json()})


def test_a_sites_protocol_role_answers_each_stage_once_in_order_and_above_the_threshold():
    from fedlab.protection import secagg
    from fedlab.experiment.site_service import Site, SiteRefusal, _Role

    site = Site("heart_disease", "cleveland", DATA)
    setup = secagg.make_setup([0, 1, 2, 3], 5, 10, "secagg", 0)
    clients = {u: secagg.new_client(u, np.arange(5, dtype=np.uint64), setup) for u in range(4)}
    keys = {u: c.advertise_keys() for u, c in clients.items()}
    role = _Role(clients[0], setup)
    site._roles[("run", 1)] = role
    header = {"run": "run", "round": 1}
    with pytest.raises(SiteRefusal, match="out of order"):
        site.masked_input(header, {})
    with pytest.raises(SiteRefusal, match="not those of this site's neighbours"):
        site.share_keys(header, {"channel/0": np.zeros(32, np.uint8), "mask/0": np.zeros(32, np.uint8)})
    from fedlab.workers import wire

    mail = {**wire.pack_bytes({v: keys[v][0] for v in (1, 2, 3)}, "channel"),
            **wire.pack_bytes({v: keys[v][1] for v in (1, 2, 3)}, "mask")}
    site.share_keys(header, mail)  # the refused ShareKeys above did not use up the stage
    with pytest.raises(SiteRefusal, match="out of order"):
        site.share_keys(header, mail)  # each stage once
    with pytest.raises(SiteRefusal, match="1 neighbours' shares, the threshold is 3"):
        site.masked_input(header, wire.pack_bytes({1: b"x"}, "mail"))  # would leave its input nearly unmasked
    with pytest.raises(SiteRefusal, match="out of order"):
        site.unmask({**header, "survivors": [1, 2, 3]}, {})  # the refused MaskedInput did not move the round on
    role.stage = 2  # as if its masked input had gone: too few survivors to unmask
    with pytest.raises(SiteRefusal, match="Unmask: 2 of this site's group survive, the threshold is 3"):
        site.unmask({**header, "survivors": [1]}, {})


def test_a_site_decrypts_a_mean_once_for_a_round_it_sent_an_update_in_and_of_two_or_more(tmp_path):
    from fedlab.protection import ckks
    from fedlab.workers import wire
    from fedlab.experiment.site_service import Site, SiteRefusal

    secret, _ = ckks.make_keys()
    site = Site("heart_disease", "cleveland", DATA, ckks_secret=secret)
    total = wire.pack_bytes(dict(enumerate(ckks.encrypt(np.arange(4.0), secret))), "ct")
    header = {"run": "r", "round": 1, "length": 4, "included": 2}
    with pytest.raises(SiteRefusal, match="no round of that run is waiting"):
        site.decrypt(header, total)  # it sent no update in that round
    site._encrypted[("r", 1)] = False  # as HomomorphicTrain leaves it
    with pytest.raises(SiteRefusal, match="fewer than 2 clients"):
        site.decrypt({**header, "included": 1}, total)
    np.testing.assert_allclose(site.decrypt(header, total)[1]["mean"], np.arange(4.0), atol=1e-3)
    with pytest.raises(SiteRefusal, match="no round of that run is waiting"):
        site.decrypt(header, total)  # once


def test_a_message_carries_numbers_and_text_only_and_a_damaged_one_is_one_line():
    from concurrent.futures import ThreadPoolExecutor

    from fedlab.workers import wire

    arrays = {"w/0": np.arange(6, dtype=np.float32).reshape(2, 3).T, "scalar": np.float32(2.5),
              "bytes": np.frombuffer(b"key", np.uint8)}
    message = wire.encode({"round": 3}, arrays)
    # decoded from many threads at once (a driver reading its sites' answers): no AST parsing to trip on
    with ThreadPoolExecutor(8) as pool:
        for header, got in pool.map(wire.decode, [message] * 200):
            assert header == {"round": 3} and set(got) == set(arrays)
            for name, array in arrays.items():
                np.testing.assert_array_equal(got[name], array)
                assert got[name].shape == np.shape(array) and got[name].dtype == array.dtype
    for damaged in (b"", message[:-1], message + b"x", b"XXXX" + message[4:]):
        with pytest.raises(wire.MessageError, match="^not a fedlab message"):
            wire.decode(damaged)
    with pytest.raises(ValueError, match="not a number type"):
        wire.encode({}, {"code": np.array([object()])})
