"""Federated algorithms (FedAvg, FedProx, FedOpt, SCAFFOLD, FedNova, FedPer, Ditto, q-FFL, ...) and their registry."""
