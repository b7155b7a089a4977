"""Flower's simulation engine on the benchmark workload, in Flower's own environment.

    .bench/flower/bin/python benchmarks/flower_system.py --workload build/bench/workload.npz --ks 10,100,1000 --rounds 4

A ClientApp and ServerApp of the kind Flower's PyTorch quickstart writes (Flower 1.42 Message API): the
2NN in PyTorch, one epoch of SGD over a DataLoader with batch size 10, FedAvg weighted by examples, no
per-round evaluation. Ray backend, one CPU per client actor (two actors in parallel on two cores).
Prints one JSON line per K like benchmarks/systems.py; round time is the time between successive
aggregations, so it covers sampling, sending, training and averaging.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

NUM_CLIENTS, BATCH, LR = 1000, 10, 0.1  # as benchmarks/workload.py
_DATA = {}


def net() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10))


def client_data(partition: int):
    if "x" not in _DATA:
        with np.load(os.environ["FEDLAB_BENCH_WORKLOAD"]) as d:
            _DATA.update(x=d["x_train"], y=d["y_train"], parts=[d[f"client_{c}"] for c in range(NUM_CLIENTS)])
    idx = _DATA["parts"][partition]
    return TensorDataset(torch.from_numpy(_DATA["x"][idx]), torch.from_numpy(_DATA["y"][idx]))


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context):
    model = net()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    dataset = client_data(int(context.node_config["partition-id"]))
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total = 0.0
    for x, y in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        total += float(loss)
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()),
                          "metrics": MetricRecord({"train_loss": total / len(loader), "num-examples": len(dataset)})})
    return Message(content=content, reply_to=msg)


class TimedFedAvg(FedAvg):
    """FedAvg that notes when each round's aggregation finishes."""

    stamps: list = []

    def aggregate_train(self, server_round, replies):
        result = super().aggregate_train(server_round, replies)
        TimedFedAvg.stamps.append(time.perf_counter())
        return result


def server_app(k: int, rounds: int) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(fraction_train=k / NUM_CLIENTS, fraction_evaluate=0.0, min_train_nodes=k,
                               min_available_nodes=NUM_CLIENTS)
        TimedFedAvg.stamps = [time.perf_counter()]
        strategy.start(grid=grid, initial_arrays=ArrayRecord(net().state_dict()), num_rounds=rounds)

    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", required=True)
    parser.add_argument("--ks", default="10,50,100")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    os.environ["FEDLAB_BENCH_WORKLOAD"] = os.path.abspath(args.workload)
    torch.manual_seed(0)
    for k in (int(v) for v in args.ks.split(",")):
        run_simulation(server_app=server_app(k, args.rounds), client_app=client_app, num_supernodes=NUM_CLIENTS,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                       "init_args": {"logging_level": "ERROR", "log_to_driver": False}})
        stamps = TimedFedAvg.stamps
        print(json.dumps({"system": "flower", "clients_per_round": k,
                          "round_seconds": list(np.diff(stamps))}), flush=True)


if __name__ == "__main__":
    main()
