"""Measures TFF's C++ worker memory after plain and DP runs (the DP path grows; see README, Known limits)."""
import os, time
from fedlab import ExperimentConfig, run_experiment
from fedlab.core.runtime import _children
def worker_rss():
    for pid, cmd in _children():
        if cmd.endswith("worker_binary"):
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS"): return int(line.split()[1]) // 1024
    return 0
base = ExperimentConfig(dataset="mnist5k", model="logreg", num_clients=100, clients_per_round=20, rounds=50, local_epochs=1, batch_size=10, client_lr=0.1, eval_every=50)
for label, cfg in [("plain", base), ("plain again", base.replace(seed=1)), ("dp z=0.5", base.replace(dp="fixed", noise_multiplier=0.5, clip_norm=0.5, delta=1e-5)), ("dp z=1.0", base.replace(dp="fixed", noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)), ("dp z=1.0 again", base.replace(dp="fixed", noise_multiplier=1.0, clip_norm=0.5, delta=1e-5, seed=1))]:
    t=time.time(); run_experiment(cfg, progress=False); print(label, "worker MB", worker_rss(), "%.0fs" % (time.time()-t), flush=True)
