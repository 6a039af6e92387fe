"""LightGBM peers on the engine's benchmark model and rows, one thread: LightGBM itself, lleaves
(LLVM-compiled) and Treelite/TL2cgen (C-compiled), each through its Python API.

Usage: lightgbm_peers.py EXPORT_DIR   (run with a Python that has lightgbm, lleaves, treelite,
tl2cgen and numpy; EXPORT_DIR as the engine bench writes it with MLOPS_BENCH_EXPORT=DIR:
`lightgbm.txt`, the model file, and `rows.f64`, the 100,000 benchmark rows, little-endian f64)

Prints, per peer: the median single-row latency over 2,000 rows (one call per row), the
100,000-row throughput (best of 5 calls), and the largest difference from LightGBM's own values.
"""
import os
import statistics
import sys
import tempfile
import time

import lightgbm
import lleaves
import numpy as np
import tl2cgen
import treelite

export = sys.argv[1]
model_file = os.path.join(export, "lightgbm.txt")
booster = lightgbm.Booster(model_file=model_file)
rows = np.fromfile(os.path.join(export, "rows.f64"), dtype="<f8").reshape(-1, booster.num_feature())
print(f"model: {booster.num_trees()} trees, {booster.num_feature()} features; {len(rows):,} rows")
reference = booster.predict(rows, num_threads=1)

work = tempfile.mkdtemp(prefix="lightgbm-peers-")
# lleaves reads the trailer Python's LightGBM writes (`pandas_categorical:`), which the C API's
# model string lacks: the peers read the same model as saved again by Python's LightGBM.
peer_file = os.path.join(work, "model.txt")
booster.save_model(peer_file)
llvm = lleaves.Model(model_file=peer_file)
started = time.perf_counter()
llvm.compile(cache=os.path.join(work, "lleaves.o"))
print(f"lleaves compiled in {time.perf_counter() - started:.1f} s")
started = time.perf_counter()
library = os.path.join(work, "tl2cgen.so")
tl2cgen.export_lib(treelite.frontend.load_lightgbm_model(peer_file), toolchain="gcc",
                   libpath=library, params={"parallel_comp": os.cpu_count()})
compiled = tl2cgen.Predictor(library, nthread=1)
print(f"tl2cgen compiled in {time.perf_counter() - started:.1f} s")

peers = {
    "lightgbm": lambda x: booster.predict(x, num_threads=1),
    "lleaves": lambda x: llvm.predict(x, n_jobs=1),
    "tl2cgen": lambda x: compiled.predict(tl2cgen.DMatrix(x)).reshape(-1),
}
for name, predict in peers.items():
    singles = []
    for i in range(2_000):
        row = rows[i : i + 1]
        t = time.perf_counter()
        predict(row)
        singles.append(time.perf_counter() - t)
    batches = []
    for _ in range(5):
        t = time.perf_counter()
        out = predict(rows)
        batches.append(time.perf_counter() - t)
    diff = float(np.max(np.abs(np.asarray(out, dtype=np.float64) - reference)))
    print(f"{name:9s} one row {statistics.median(singles) * 1e6:8.2f} µs   "
          f"{len(rows):,} rows {len(rows) / min(batches):12,.0f} rows/s   max |Δ| vs lightgbm {diff:.3g}")
