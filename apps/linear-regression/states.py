"""Federated linear least squares (optionally ridge), exact.

Every site sends X'X, X'y, y'y, its row count and the sum of y; the coordinator adds them up,
solves (X'X + ridge I') b = X'y, derives the residual sum of squares, sigma^2, the standard
errors and R^2 from the same sums, and broadcasts the model. Every site writes the model and
its own predictions. Only p x p and p x 1 sums leave a site, never rows.
"""

import json
import os

import numpy as np
import pandas as pd
import yaml
from FeatureCloud.app.engine.app import AppState, Role, app_state

INPUT_DIR = "/mnt/input"
OUTPUT_DIR = "/mnt/output"
KEY = "fc_linear_regression"
DEFAULTS = {
    "input_filename": "data.csv",
    "sep": ",",
    "target": None,
    "features": None,
    "intercept": True,
    "ridge": 0.0,
}
FLOAT = "%.17g"


def read_config():
    config = dict(DEFAULTS)
    path = os.path.join(INPUT_DIR, "config.yml")
    if os.path.isfile(path):
        with open(path) as handle:
            config.update((yaml.safe_load(handle) or {}).get(KEY) or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config.yml: {KEY}: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    if not config["target"]:
        raise ValueError(f"config.yml: {KEY}.target is required: the name of the column to predict")
    if not isinstance(config["intercept"], bool):
        raise ValueError(f"config.yml: {KEY}.intercept must be true or false")
    ridge = config["ridge"]
    if isinstance(ridge, bool) or not isinstance(ridge, int | float) or not ridge >= 0:
        raise ValueError(f"config.yml: {KEY}.ridge must be a number >= 0, not {ridge!r}")
    config["ridge"] = float(ridge)
    if isinstance(config["features"], str):
        config["features"] = [config["features"]]
    return config


def read_data(config):
    """The site's design matrix (intercept column first when used), target and feature names."""
    data = pd.read_csv(os.path.join(INPUT_DIR, config["input_filename"]), sep=config["sep"])
    target = config["target"]
    if target not in data.columns:
        raise ValueError(f"the target column {target!r} is not in the data: {list(data.columns)}")
    features = config["features"]
    if features is None:
        features = [c for c in data.select_dtypes("number").columns if c != target]
    else:
        missing = [c for c in features if c not in data.columns]
        if missing:
            raise ValueError(f"config.yml: {KEY}.features names columns not in the data: {missing}")
        if target in features:
            raise ValueError(f"the target {target!r} is also listed as a feature")
    used = data[[*features, target]]
    not_numeric = [c for c in used.columns if not pd.api.types.is_numeric_dtype(used[c])]
    if not_numeric:
        raise ValueError(f"non-numeric columns: {not_numeric}; encode them or leave them out")
    if used.isna().any().any():
        raise ValueError(f"missing values in {list(used.columns[used.isna().any()])}")
    x = used[features].to_numpy(dtype=float)
    if config["intercept"]:
        x = np.column_stack([np.ones(len(x)), x])
    if x.shape[1] == 0:
        raise ValueError("no features and no intercept: nothing to fit")
    return x, used[target].to_numpy(dtype=float), list(features)


def by_site(part):
    """Sites' parts in a fixed order, whatever order they arrived in: the same sums, to the
    last bit, on every run."""
    return part["site"]


@app_state("initial")
class LocalSums(AppState):
    def register(self):
        self.register_transition("solve", Role.COORDINATOR)
        self.register_transition("predict", Role.PARTICIPANT)

    def run(self):
        config = read_config()
        x, y, features = read_data(config)
        self.store("config", config)
        self.store("x", x)
        self.store("y", y)
        self.log(f"{len(y)} rows, target {config['target']!r}, features {features}")
        self.send_data_to_coordinator(
            {
                "site": self.id,
                "features": features,
                "n": len(y),
                "xtx": x.T @ x,
                "xty": x.T @ y,
                "yty": float(y @ y),
                "ysum": float(y.sum()),
            },
            memo="linreg-sums",
        )
        return "solve" if self.is_coordinator else "predict"


@app_state("solve", Role.COORDINATOR)
class Solve(AppState):
    def register(self):
        self.register_transition("predict", Role.COORDINATOR)

    def run(self):
        config = self.load("config")
        parts = sorted(self.gather_data(memo="linreg-sums"), key=by_site)
        features = parts[0]["features"]
        for part in parts[1:]:
            if part["features"] != features:
                raise ValueError(
                    f"sites disagree on the features: {features} vs {part['features']}"
                )
        n = sum(part["n"] for part in parts)
        if n == 0:
            raise ValueError("no rows at any site")
        xtx = sum(part["xtx"] for part in parts)
        xty = sum(part["xty"] for part in parts)
        yty = sum(part["yty"] for part in parts)
        ysum = sum(part["ysum"] for part in parts)
        p = xtx.shape[0]
        penalty = np.eye(p) * config["ridge"]
        if config["intercept"]:
            penalty[0, 0] = 0.0  # the intercept is not penalised
        a = xtx + penalty
        try:
            beta = np.linalg.solve(a, xty)
        except np.linalg.LinAlgError as error:
            raise ValueError(
                "X'X is singular (collinear or constant features, or fewer rows than terms); "
                "drop features or set ridge > 0"
            ) from error
        rss = float(yty - 2 * beta @ xty + beta @ xtx @ beta)
        tss = float(yty - ysum**2 / n)
        if n > p:
            sigma2 = rss / (n - p)
            a_inv = np.linalg.inv(a)
            std_error = np.sqrt(np.diag(sigma2 * a_inv @ xtx @ a_inv))
        else:
            self.log(f"{n} rows for {p} terms: no degrees of freedom left for sigma^2")
            sigma2 = None
            std_error = np.full(p, np.nan)
        r2 = 1 - rss / tss if tss > 0 else None
        self.log(f"fitted on {n} rows from {len(parts)} sites: R^2 = {r2}")
        terms = (["intercept"] if config["intercept"] else []) + features
        self.broadcast_data(
            {
                "terms": terms,
                "beta": beta,
                "std_error": std_error,
                "metrics": {
                    "r2": r2,
                    "n": int(n),
                    "rss": rss,
                    "sigma2": sigma2,
                    "features": features,
                    "target": config["target"],
                    "ridge": config["ridge"],
                },
            },
            memo="linreg-model",
        )
        return "predict"


@app_state("predict")
class Predict(AppState):
    def register(self):
        self.register_transition("terminal")

    def run(self):
        model = self.await_data(n=1, memo="linreg-model")
        table = pd.DataFrame(
            {"term": model["terms"], "coefficient": model["beta"], "std_error": model["std_error"]}
        )
        table.to_csv(os.path.join(OUTPUT_DIR, "coefficients.csv"), index=False, float_format=FLOAT)
        with open(os.path.join(OUTPUT_DIR, "metrics.json"), "w") as handle:
            json.dump(model["metrics"], handle, indent=2)
            handle.write("\n")
        x, y = self.load("x"), self.load("y")
        predictions = pd.DataFrame(
            {"row": np.arange(len(y)), "y": y, "predicted": x @ model["beta"]}
        )
        predictions.to_csv(
            os.path.join(OUTPUT_DIR, "predictions.csv"), index=False, float_format=FLOAT
        )
        self.log(f"wrote the model and {len(y)} predictions")
        return "terminal"
