#!/usr/bin/env bash
# A search shared by workers (`mlops train --search-workers N`, release build) against one
# container, on the embedded store: California Housing, linear + XGBoost + LightGBM,
# SEARCHBENCH_TRIALS trials (default 30), seed 7, CPU.
#   1. one container (both cores);
#   2. four workers side by side here, two pinned to each core (taskset), worker 1 SIGKILLed once
#      after SEARCHBENCH_KILL_AFTER seconds (default 20) and started again, as AWS Batch
#      retries it;
#   3. one container pinned to one core, then two workers pinned to a core each (taskset): the
#      speed-up on CPUs of their own.
# Every run must select the same candidate with the same parameters and test metrics as run 1, and
# every worker must report the same trials. Prints wall times and the fits each worker made.
# Pinned, a worker sees one CPU, so its learners use one thread, as a child on one core would:
# four unpinned workers each run two spinning OpenMP threads on the two cores and measure the
# oversubscription (245 s against 35 s for 12 trials), not the search. (OMP_NUM_THREADS does not
# do it: the learners' thread count is the CPUs the process may use.)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${MLOPS_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/mlops/target}/release/mlops}"
DATA="${SEARCHBENCH_DATA:-$ROOT/../shared/data/california_housing.csv}"
[ -x "$BIN" ] || { echo "build it first: cargo build --release -p mlops ($BIN)" >&2; exit 1; }
[ -f "$DATA" ] || { echo "no data file: $DATA" >&2; exit 1; }
RUN="$(mktemp -d)"
trap 'rm -rf "$RUN"' EXIT
python3 - "$BIN" "$DATA" "$RUN" "${SEARCHBENCH_TRIALS:-30}" "${SEARCHBENCH_KILL_AFTER:-20}" <<'PY'
import os, re, signal, subprocess, sys, time

binary, data, run, trials, kill_after = sys.argv[1:4] + [int(sys.argv[4]), float(sys.argv[5])]
MLOPS_TRAIN = ["train", "california_housing", "--data", data, "--candidates", "linear,xgboost,lightgbm",
               "--search-trials", str(trials), "--seed", "7", "--device", "cpu"]

def command(home, extra=(), core=None):
    pin = ["taskset", "-c", str(core)] if core is not None else []
    return pin + [binary, "--home", f"{run}/{home}"] + MLOPS_TRAIN + list(extra)

def start(home, name, extra=(), core=None):
    log = open(f"{run}/{name}.log", "ab")
    return subprocess.Popen(command(home, extra, core), stdout=log, stderr=subprocess.STDOUT)

def read(name):
    return open(f"{run}/{name}.log", errors="replace").read()

def selection(name):
    """The selected candidate, its parameters and its test metrics, as worker 0 printed them."""
    text = read(name)
    m = re.search(r"^selected .*?(?=^registered )", text, re.S | re.M)
    assert m, f"{name}: no selection in its log:\n{text[-3000:]}"
    return m.group(0).strip()

def search_line(name):
    m = re.search(r"^search complete: (\d+) trials \((\d+) complete\); .* made (\d+) fits", read(name), re.M)
    assert m, f"{name}: no search summary:\n{read(name)[-2000:]}"
    return int(m.group(1)), int(m.group(2)), int(m.group(3))

def fits_of_leader(name):
    return len(re.findall(r"^  worker 0 of \d+: fit ", read(name), re.M))

def one(home, core=None):
    started = time.time()
    p = start(home, home, core=core)
    assert p.wait() == 0, read(home)[-3000:]
    return time.time() - started

def workers(home, n, cores=None, kill=None):
    started = time.time()
    procs = {}
    for i in range(n):
        core = cores[i] if cores else None
        procs[i] = start(home, f"{home}-{i}", ["--search-workers", str(n), "--search-worker-index", str(i),
                                                "--search-claim-seconds", "10"], core)
    killed = False
    while any(p.poll() is None for p in procs.values()):
        if kill is not None and not killed and time.time() - started >= kill_after:
            victim = procs[kill]
            if victim.poll() is None:
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                print(f"  worker {kill} SIGKILLed at {time.time() - started:.1f} s; started again")
                procs[kill] = start(home, f"{home}-{kill}", ["--search-workers", str(n), "--search-worker-index",
                                                            str(kill), "--search-claim-seconds", "10"],
                                 cores[kill] if cores else None)
            killed = True
        time.sleep(0.2)
    for i, p in procs.items():
        assert p.returncode == 0, f"worker {i}: {read(f'{home}-{i}')[-3000:]}"
    return time.time() - started

print(f"search of {trials} trials, California Housing, linear + XGBoost + LightGBM, seed 7")
reference_time = one("one")
reference = selection("one")
print(f"one container (2 cores): {reference_time:.1f} s")
print("  " + reference.replace("\n", "\n  "))

four = workers("four", 4, cores=[0, 1, 0, 1], kill=1)
assert selection("four-0") == reference, f"4 workers selected otherwise:\n{selection('four-0')}"
summaries = [search_line(f"four-{i}") for i in range(1, 4)]
assert len({(t, c) for t, c, _ in summaries}) == 1, summaries
made = [fits_of_leader("four-0")] + [m for _, _, m in summaries]
print(f"4 workers here (two pinned to each core): {four:.1f} s ({four / reference_time:.2f}x one container), same selection; "
      f"fits per worker {made} (worker 1's after its restart), {summaries[0][0]} trials")

pinned_one = one("pinned-one", core=0)
assert selection("pinned-one") == reference
pinned_two = workers("pinned-two", 2, cores=[0, 1])
assert selection("pinned-two-0") == reference
print(f"one container on one core: {pinned_one:.1f} s; two workers on a core each: {pinned_two:.1f} s "
      f"({pinned_one / pinned_two:.2f}x), same selection")
PY
