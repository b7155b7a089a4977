"""`make bench`: fedlab against a plain Keras loop, Flower and the compute limit, in one run.

    python benchmarks/run.py [--ks 10,100,1000] [--rounds 4] [--flower-python .bench/flower/bin/python]
                             [--out results/benchmarks] [--figures figures/benchmarks] [--smoke]

Each system runs in its own process while this one samples the resident memory of that process and all
its children (TFF's worker, Ray's actors) every 0.2 s. Seconds per round: median of the rounds after the
first, pooled over --repeats runs of every system, interleaved. Writes OUT/round_time.csv
(system, clients_per_round, seconds_per_round, ... and the lowest and highest median of a single repeat), OUT/memory.csv,
OUT/workbench.csv (cold start: median and slowest of three, measured before
the systems; widget latency), OUT/machine.txt, and FIGURES/round_time.png; prints the
table and the ratios the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import threading
import time

import numpy as np
import pandas as pd

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, from /proc."""
    from fedlab.core.runtime import descendants, process_table

    table = process_table()
    return sum(table[p][2] for p in [pid] + descendants(pid, table) if p in table)


def run_system(cmd: list[str], log: pathlib.Path, env=None) -> tuple[list[dict], int, float]:
    """Runs one system; returns its JSON lines, peak tree RSS (bytes) and wall seconds."""
    t0 = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT, env=env)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, _ = proc.communicate()
        done.set()
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed with status {proc.returncode}; see {log}")
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return lines, peak[0], time.perf_counter() - t0


def cold_start(log: pathlib.Path) -> float:
    """Seconds from starting Python to the first fedlab round finished (the benchmark workload, K = 10)."""
    code = ("import time, fedlab, sys; sys.path.insert(0, 'benchmarks'); import workload;"
            "fedlab.run_experiment(workload.config(10, 1), progress=False,"
            " callback=lambda row, h: print('FIRST_ROUND', time.time(), flush=True))")
    t0 = time.time()
    with open(log, "w") as err:
        out = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, text=True,
                             cwd=ROOT, check=True).stdout
    stamp = float(next(line.split()[1] for line in out.splitlines() if line.startswith("FIRST_ROUND")))
    return stamp - t0


def widget_latency(repeats: int = 3) -> list[float]:
    """Seconds from a changed setting + Run to the first redrawn curve, process already built (in this process)."""
    import fedlab
    import workload

    fedlab.setup()
    panel = fedlab.ExperimentPanel(workload.config(10, 3), ["clients_per_round", "local_epochs"])
    panel.start()
    panel.wait()  # builds and caches the process, as a researcher's first run does
    latencies = []
    for i in range(repeats):
        first = threading.Event()
        stamp = {}

        def redrawn(change, stamp=stamp, first=first):
            if panel.progress.value >= 1 and not first.is_set():
                stamp["t"] = time.perf_counter()
                first.set()

        panel.image.observe(redrawn, names="value")
        panel.controls["clients_per_round"].value = 11 + i  # a new setting: never from a cache
        t0 = time.perf_counter()
        panel.start()
        first.wait(120)
        panel.wait()
        panel.image.unobserve(redrawn, names="value")
        latencies.append(stamp["t"] - t0)
    return latencies


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = int(next(line.split()[1] for line in open("/proc/meminfo") if line.startswith("MemTotal"))) / 2**20
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, no GPU, {platform.platform()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="10,100,1000")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--flower-python", default=str(ROOT / ".bench" / "flower" / "bin" / "python"))
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks"))
    parser.add_argument("--figures", default=str(ROOT / "figures" / "benchmarks"))
    parser.add_argument("--repeats", type=int, default=2, help="runs of every system, interleaved")
    parser.add_argument("--flower-ks", default="10,100",
                        help="Flower's K values: at K = 1000 (1,000 supernodes) Ray's simulation ran its first round "
                             "for over 8 minutes and one actor grew past 10 GB on this 24 GB machine (2026-11-26)")
    parser.add_argument("--smoke", action="store_true", help="tiny run of fedlab and the limit only")
    args = parser.parse_args(argv)
    import workload

    from fedlab.core.runtime import onednn_on

    try:  # the oneDNN setting every system runs with (fedlab's import set its default): one TensorFlow reads
        onednn = "1" if onednn_on() else "0"
    except ValueError as err:
        raise SystemExit(str(err)) from None
    ks = [int(k) for k in args.ks.split(",")]
    rounds = args.rounds
    # The limit runs with TensorFlow's default thread pools and with one intra-op thread (as fedlab's worker):
    # the ratio takes the faster of the two at each K.
    systems = ["fedlab", "fedlab_bookkeeping", "keras_loop", "limit", "limit_one_thread", "flower"]
    if args.smoke:
        ks, rounds, systems = [2], 2, ["fedlab", "limit", "limit_one_thread"]
    out, figures = pathlib.Path(args.out), pathlib.Path(args.figures)
    build = ROOT / "build" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    build.mkdir(parents=True, exist_ok=True)
    data = workload.export(build / "workload.npz", ks, rounds)
    common = ["--workload", str(data), "--ks", ",".join(map(str, ks)), "--rounds", str(rounds)]

    # Cold start first: after Flower's Ray run (tens of GB) TensorFlow's libraries are out of the file cache, and a
    # cold start measured then times the disk, not fedlab (25 s against 14-15 s on a quiet machine, 2026-11-26).
    print("[bench] cold start ...", flush=True)
    colds = [cold_start(build / f"cold_start-{i + 1}.log") for i in range(1 if args.smoke else 3)]
    print(f"[bench] cold start: {', '.join(f'{c:.1f} s' for c in colds)}", flush=True)

    timed: dict = {}  # (system, K) -> per-repeat lists of round seconds
    memory = []
    for repeat in range(1 if args.smoke else args.repeats):  # systems interleaved: drift hits all alike
        for system in systems:
            if system == "flower":
                if not pathlib.Path(args.flower_python).exists():
                    raise SystemExit(f"--flower-python: {args.flower_python} does not exist; `make bench` creates it")
                flower_ks = ",".join(k for k in args.flower_ks.split(",") if int(k) in ks)
                cmd = [args.flower_python, str(HERE / "flower_system.py"), "--workload", str(data), "--ks",
                       flower_ks, "--rounds", str(rounds)]
            else:
                cmd = [sys.executable, str(HERE / "systems.py"), system.removesuffix("_one_thread")] + common
            # every system on the kernels fedlab sets (oneDNN's, on every CPU: fedlab.core.runtime.onednn_on), so that
            # on a CPU where TensorFlow's default is Eigen's the systems still compare like with like
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn)
            if system.endswith("_one_thread"):
                env["TF_NUM_INTRAOP_THREADS"] = "1"
            if system.startswith("fedlab"):  # TFF's worker on one intra-op thread (fedlab.core.runtime.worker_environment)
                env["FEDLAB_WORKER_INTRAOP_THREADS"] = "1"
            print(f"[bench] {system} (repeat {repeat + 1}) ...", flush=True)
            lines, peak, wall = run_system(cmd, build / f"{system}-{repeat + 1}.log", env=env)
            for line in lines:  # the first round traces, compiles, starts actors: not timed
                timed.setdefault((system, line["clients_per_round"]), []).append(line["round_seconds"][1:])
            memory.append({"system": system, "repeat": repeat + 1, "peak_rss_mb": peak / 2**20, "wall_seconds": wall})
            print(f"[bench] {system}: {wall:.0f} s, peak {peak / 2**20:.0f} MB", flush=True)

    rows = []
    for (system, k), repeats in timed.items():
        pooled = np.concatenate(repeats)
        medians = [float(np.median(r)) for r in repeats]
        rows.append({"system": system, "clients_per_round": k, "seconds_per_round": float(np.median(pooled)),
                     "rounds_timed": len(pooled), "repeats": len(repeats),
                     "lowest_repeat_median": min(medians), "highest_repeat_median": max(medians)})
    table = pd.DataFrame(rows)
    table.to_csv(out / "round_time.csv", index=False)
    memory = pd.DataFrame(memory).groupby("system", sort=False, as_index=False).agg(
        peak_rss_mb=("peak_rss_mb", "max"), wall_seconds=("wall_seconds", "median"))
    memory.to_csv(out / "memory.csv", index=False)

    print("[bench] widget latency ...", flush=True)
    latencies = widget_latency(1 if args.smoke else 3)
    workbench = pd.DataFrame([{"measure": "cold_start_seconds_median", "value": float(np.median(colds))},
                              {"measure": "cold_start_seconds_max", "value": float(np.max(colds))},
                              {"measure": "widget_latency_seconds_median", "value": float(np.median(latencies))},
                              {"measure": "widget_latency_seconds_max", "value": float(np.max(latencies))}])
    workbench.to_csv(out / "workbench.csv", index=False)
    (out / "machine.txt").write_text(f"{time.strftime('%Y-%m-%d')}: {machine()}\n")

    wide = table.pivot(index="clients_per_round", columns="system", values="seconds_per_round")
    ratios = pd.DataFrame(index=wide.index)
    if "limit" in wide:
        limit = wide[[c for c in ("limit", "limit_one_thread") if c in wide]].min(axis=1)
        ratios["fedlab / limit"] = wide["fedlab"] / limit
    if "fedlab_bookkeeping" in wide:
        ratios["bookkeeping / fedlab"] = wide["fedlab_bookkeeping"] / wide["fedlab"]
    if "keras_loop" in wide:
        ratios["keras_loop / fedlab"] = wide["keras_loop"] / wide["fedlab"]
    if "flower" in wide:
        ratios["flower / fedlab"] = wide["flower"] / wide["fedlab"]
    ratios.reset_index().to_csv(out / "ratios.csv", index=False)
    plot(table, figures / "round_time.png")
    pd.set_option("display.width", 160)
    print("\nseconds per round (median)\n", wide.round(3).to_string(), sep="")
    print("\nratios\n", ratios.round(2).to_string(), sep="")
    print("\npeak memory (MB)\n", memory.round(0).to_string(index=False), sep="")
    print("\n", workbench.round(2).to_string(index=False), sep="")
    print(f"\nmachine: {machine()}")
    return 0


def plot(table: pd.DataFrame, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for system, group in table.groupby("system", sort=False):
        group = group.sort_values("clients_per_round")
        spread = [group.seconds_per_round - group.lowest_repeat_median,
                  group.highest_repeat_median - group.seconds_per_round]
        ax.errorbar(group.clients_per_round, group.seconds_per_round, yerr=np.clip(spread, 0, None), marker="o",
                    capsize=3, label=system)
    ax.set(xscale="log", yscale="log", xlabel="clients per round (K)", ylabel="seconds per round (median)",
           title="one FedAvg round: 2NN, mnist5k, E = 1, B = 10\n(bars: lowest and highest median of one repeat)")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150, bbox_inches="tight")


if __name__ == "__main__":
    sys.exit(main())
