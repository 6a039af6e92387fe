"""Loads models saved by the Rust trainer in Python xgboost / lightgbm and writes predictions.

Usage: parity.py KIND MODEL_FILE FEATURES_CSV OUT_FILE
FEATURES_CSV holds one row per line, values printed with full round-trip precision.
"""
import sys

import numpy as np


def main() -> None:
    kind, model_path, features_path, out_path = sys.argv[1:5]
    x = np.loadtxt(features_path, delimiter=",", dtype=np.float64, ndmin=2)
    if kind == "xgboost":
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(model_path)
        # XGBoost works in float32, as the Rust side does.
        pred = booster.predict(xgboost.DMatrix(x.astype(np.float32), missing=np.nan))
        version = xgboost.__version__
    elif kind == "lightgbm":
        import lightgbm

        booster = lightgbm.Booster(model_file=model_path)
        pred = booster.predict(x)
        version = lightgbm.__version__
    else:
        raise SystemExit(f"unknown kind {kind}")
    np.savetxt(out_path, np.asarray(pred, dtype=np.float64), fmt="%.17g")
    print(f"{kind} {version}: {len(pred)} predictions")


if __name__ == "__main__":
    main()
