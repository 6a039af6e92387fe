"""Trains small models in Python xgboost / lightgbm on data with missing values, zeros treated
as missing, and a categorical feature (paths the project's own pipeline never produces), and
writes each model, its test rows and the library's predictions into OUT_DIR.

Usage: engine_fixtures.py OUT_DIR
"""
import os
import sys

import lightgbm
import numpy as np
import xgboost


def data(rng, n, with_categories=False):
    x = rng.normal(size=(n, 5))
    if with_categories:
        x[:, 0] = rng.integers(0, 12, size=n)
    y = x[:, 1] * 2 + np.sin(x[:, 2]) + (x[:, 0] % 3 if with_categories else x[:, 0]) + rng.normal(scale=0.1, size=n)
    x[rng.random(size=x.shape) < 0.15] = np.nan
    x[rng.random(size=x.shape) < 0.05] = 0.0
    return x, y


def save(out, name, model_bytes, x, pred):
    with open(os.path.join(out, f"{name}.model"), "wb") as f:
        f.write(model_bytes)
    np.savetxt(os.path.join(out, f"{name}.x.csv"), x, delimiter=",", fmt="%.17g")
    np.savetxt(os.path.join(out, f"{name}.pred.txt"), pred, fmt="%.17g")


def main() -> None:
    out = sys.argv[1]
    rng = np.random.default_rng(7)
    x, y = data(rng, 3000)
    xt, _ = data(rng, 500)
    # Test rows also probe extremes and unseen values.
    xt[:5] = [[np.nan] * 5, [0.0] * 5, [1e30] * 5, [-1e30] * 5, [-0.0] * 5]

    for name, objective, label in [
        ("xgb_regression_nan", "reg:squarederror", y),
        ("xgb_logistic_nan", "binary:logistic", (y > 0).astype(float)),
    ]:
        booster = xgboost.train(
            {"objective": objective, "max_depth": 6, "eta": 0.1, "tree_method": "hist", "seed": 1},
            xgboost.DMatrix(x, label=label, missing=np.nan),
            num_boost_round=80,
        )
        pred = booster.predict(xgboost.DMatrix(xt.astype(np.float32), missing=np.nan))
        save(out, name, bytes(booster.save_raw(raw_format="json")), xt, pred)

    for name, params in [
        ("lgbm_nan", {"objective": "regression"}),
        ("lgbm_zero_as_missing", {"objective": "regression", "zero_as_missing": True}),
        ("lgbm_binary_sigmoid", {"objective": "binary", "sigmoid": 0.7}),
    ]:
        label = (y > 0).astype(float) if params["objective"] == "binary" else y
        ds = lightgbm.Dataset(x, label=label)
        booster = lightgbm.train({**params, "num_leaves": 31, "verbosity": -1, "seed": 1}, ds, num_boost_round=60)
        save(out, name, booster.model_to_string().encode(), xt, booster.predict(xt))

    xc, yc = data(rng, 3000, with_categories=True)
    xct, _ = data(rng, 500, with_categories=True)
    xct[:4, 0] = [np.nan, -3.0, 40.0, 7.0]  # missing, negative and unseen categories
    ds = lightgbm.Dataset(xc, label=yc, categorical_feature=[0])
    booster = lightgbm.train({"objective": "regression", "num_leaves": 31, "verbosity": -1, "seed": 1, "min_data_per_group": 5, "cat_smooth": 1}, ds, num_boost_round=60)
    save(out, "lgbm_categorical", booster.model_to_string().encode(), xct, booster.predict(xct))
    print("fixtures written to", out)


if __name__ == "__main__":
    main()
