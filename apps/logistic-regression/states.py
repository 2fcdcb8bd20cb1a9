"""Federated logistic regression by Newton's method (iteratively reweighted least squares).

Every round the coordinator broadcasts the coefficients β (zeros to start); every site sends
the gradient Xᵀ(y - p), the Hessian XᵀWX and the log-likelihood of its own rows at β; the
coordinator adds them up, takes a Newton step on the pooled objective (negative
log-likelihood + ridge/2·||β||², the intercept unpenalised) and broadcasts the new β, until
the largest change is below ``tol`` or ``max_iter`` steps were taken. Only these sums leave a
site, never rows. With ``smpc: true`` the sums are added up by secure aggregation, so the
coordinator sees only the pooled values.
"""

import json
import os

import numpy as np
import pandas as pd
import yaml
from FeatureCloud.app.engine.app import AppState, Role, app_state

INPUT_DIR = "/mnt/input"
OUTPUT_DIR = "/mnt/output"
CONFIG_KEY = "fc_logistic_regression"
DEFAULTS = {
    "input_filename": "data.csv",
    "sep": ",",
    "target": None,
    "features": None,
    "intercept": True,
    "ridge": 0.0,
    "max_iter": 50,
    "tol": 1e-10,
    "smpc": False,
}
INTERCEPT = "intercept"


def read_config():
    config = dict(DEFAULTS)
    path = os.path.join(INPUT_DIR, "config.yml")
    if os.path.isfile(path):
        with open(path) as handle:
            config.update((yaml.safe_load(handle) or {}).get(CONFIG_KEY) or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config.yml: {CONFIG_KEY}: unknown keys {unknown}")
    if not config["target"]:
        raise ValueError(
            f"config.yml: {CONFIG_KEY}: target is required (the name of the 0/1 column)"
        )
    features = config["features"]
    if features is not None and (
        not isinstance(features, list) or not all(isinstance(f, str) for f in features)
    ):
        raise ValueError(f"config.yml: {CONFIG_KEY}: features must be a list of column names")
    if float(config["ridge"]) < 0:
        raise ValueError(f"config.yml: {CONFIG_KEY}: ridge must be >= 0")
    if int(config["max_iter"]) < 1:
        raise ValueError(f"config.yml: {CONFIG_KEY}: max_iter must be >= 1")
    if float(config["tol"]) <= 0:
        raise ValueError(f"config.yml: {CONFIG_KEY}: tol must be > 0")
    config["ridge"] = float(config["ridge"])
    config["max_iter"] = int(config["max_iter"])
    config["tol"] = float(config["tol"])
    config["intercept"] = bool(config["intercept"])
    config["smpc"] = bool(config["smpc"])
    return config


def load_data(config):
    """The site's design matrix, 0/1 response and row numbers, after dropping incomplete rows."""
    filename = config["input_filename"]
    data = pd.read_csv(os.path.join(INPUT_DIR, filename), sep=config["sep"])
    target = config["target"]
    if target not in data.columns:
        raise ValueError(f"{filename}: no target column {target!r} (columns: {list(data.columns)})")
    if config["features"] is None:
        features = [c for c in data.select_dtypes("number").columns if c != target]
    else:
        features = list(config["features"])
        missing = [f for f in features if f not in data.columns]
        if missing:
            raise ValueError(f"{filename}: feature columns {missing} are missing")
        if target in features:
            raise ValueError(f"{filename}: the target {target!r} is also listed as a feature")
        text = [f for f in features if not pd.api.types.is_numeric_dtype(data[f])]
        if text:
            raise ValueError(f"{filename}: feature columns {text} are not numeric")
    if not features and not config["intercept"]:
        raise ValueError(f"{filename}: no features and no intercept: nothing to fit")
    frame = data[[*features, target]].dropna()
    if len(frame) == 0:
        raise ValueError(f"{filename}: no complete rows")
    y = frame[target]
    bad = sorted({str(v) for v in y.unique() if not _is_zero_or_one(v)})
    if bad:
        raise ValueError(
            f"{filename}: the target {target!r} must be binary 0/1; found values {bad[:5]}"
        )
    x = frame[features].to_numpy(dtype=float)
    if config["intercept"]:
        x = np.column_stack([np.ones(len(frame)), x])
    return {
        "x": x,
        "y": y.to_numpy(dtype=float),
        "rows": frame.index.to_numpy(),
        "features": features,
        "terms": ([INTERCEPT] if config["intercept"] else []) + features,
        "dropped": len(data) - len(frame),
    }


def _is_zero_or_one(value):
    try:
        return float(value) in (0.0, 1.0)
    except (TypeError, ValueError):
        return False


def probabilities(x, beta):
    eta = x @ beta
    return np.exp(-np.logaddexp(0.0, -eta)), eta


def local_statistics(x, y, beta):
    """[gradient (k), Hessian (k·k, row-major), log-likelihood, rows] of one site at beta."""
    p, eta = probabilities(x, beta)
    gradient = x.T @ (y - p)
    hessian = x.T @ (x * (p * (1.0 - p))[:, None])
    log_likelihood = float(np.sum(y * eta - np.logaddexp(0.0, eta)))
    return np.concatenate([gradient, hessian.ravel(), [log_likelihood, float(len(y))]])


def unpack(stats, k):
    stats = np.asarray(stats, dtype=float).ravel()
    if stats.shape != (k + k * k + 2,):
        raise ValueError(f"expected {k + k * k + 2} aggregated numbers, got {stats.shape}")
    return stats[:k], stats[k : k + k * k].reshape(k, k), float(stats[-2]), round(float(stats[-1]))


@app_state("initial")
class Setup(AppState):
    """Read the data; agree on the model's terms with the coordinator."""

    def register(self):
        self.register_transition("check", Role.COORDINATOR)
        self.register_transition("local", Role.PARTICIPANT)

    def run(self):
        config = read_config()
        data = load_data(config)
        self.store("config", config)
        self.store("data", data)
        self.store("iteration", 0)
        self.log(
            f"{len(data['y'])} rows ({data['dropped']} incomplete dropped), terms {data['terms']}"
        )
        self.send_data_to_coordinator(
            {"site": self.id, "terms": data["terms"], "smpc": config["smpc"]}, memo="terms"
        )
        return "check" if self.is_coordinator else "local"


@app_state("check", Role.COORDINATOR)
class CheckTerms(AppState):
    def register(self):
        self.register_transition("local", Role.COORDINATOR)

    def run(self):
        parts = sorted(self.gather_data(memo="terms"), key=lambda part: part["site"])
        terms = self.load("data")["terms"]
        for part in parts:
            if part["terms"] != terms:
                raise ValueError(
                    f"sites disagree on the model: {self.id} has {terms}, "
                    f"{part['site']} has {part['terms']}"
                )
        modes = {part["site"]: part["smpc"] for part in parts}
        if len(set(modes.values())) != 1:
            raise ValueError(f"sites disagree on smpc: {modes}")
        self.store("beta", np.zeros(len(terms)))
        self.broadcast_data({"beta": np.zeros(len(terms)), "done": False}, memo="beta-0")
        return "local"


@app_state("local")
class LocalStep(AppState):
    """Take the coordinator's β; either send this site's sums at β, or finish."""

    def register(self):
        self.register_transition("newton", Role.COORDINATOR)
        self.register_transition("local", Role.PARTICIPANT)
        self.register_transition("write")

    def run(self):
        config, data = self.load("config"), self.load("data")
        i = self.load("iteration")
        message = self.await_data(n=1, memo=f"beta-{i}")
        if message["done"]:
            self.store("result", message)
            return "write"
        stats = local_statistics(data["x"], data["y"], np.asarray(message["beta"], dtype=float))
        if config["smpc"]:
            # secure aggregation needs JSON: a flat list of floats, added up element-wise
            self.send_data_to_coordinator(stats.tolist(), use_smpc=True, memo=f"stats-{i}")
        else:
            self.send_data_to_coordinator({"site": self.id, "stats": stats}, memo=f"stats-{i}")
        self.store("iteration", i + 1)
        return "newton" if self.is_coordinator else "local"


@app_state("newton", Role.COORDINATOR)
class NewtonStep(AppState):
    """Add up the sites' sums, take one Newton step, decide whether to stop."""

    def register(self):
        self.register_transition("local", Role.COORDINATOR)

    def run(self):
        config, data = self.load("config"), self.load("data")
        i = self.load("iteration") - 1
        terms = data["terms"]
        k = len(terms)
        if config["smpc"]:
            total = self.aggregate_data(use_smpc=True, memo=f"stats-{i}")
        else:
            parts = sorted(self.gather_data(memo=f"stats-{i}"), key=lambda part: part["site"])
            total = np.sum([part["stats"] for part in parts], axis=0)  # fixed order: repeatable
        gradient, hessian, log_likelihood, n_total = unpack(total, k)
        beta = self.load("beta")
        penalty = np.full(k, config["ridge"])
        if config["intercept"]:
            penalty[0] = 0.0
        objective_hessian = hessian + np.diag(penalty)
        try:
            step = np.linalg.solve(objective_hessian, gradient - penalty * beta)
        except np.linalg.LinAlgError as error:
            raise ValueError(
                "the pooled Hessian is singular: collinear features, or a constant one "
                "next to the intercept; drop features or set ridge > 0"
            ) from error
        new_beta = beta + step
        if not np.all(np.isfinite(new_beta)):
            raise ValueError("the Newton step diverged; perfect separation? set ridge > 0")
        change = float(np.max(np.abs(step)))
        converged = change < config["tol"]
        done = converged or i + 1 >= config["max_iter"]
        self.log(
            f"iteration {i + 1}: log-likelihood {log_likelihood:.12g} at the previous β, "
            f"max |Δβ| = {change:.3g}"
        )
        self.store("beta", new_beta)
        message = {"beta": new_beta, "done": done}
        if done:
            covariance = np.linalg.inv(objective_hessian)
            message.update(
                converged=converged,
                iterations=i + 1,
                log_likelihood=log_likelihood,
                std_errors=np.sqrt(np.diag(covariance)),
                n_total=n_total,
            )
            if not converged:
                self.log(f"not converged after {i + 1} iterations (max |Δβ| = {change:.3g})")
        self.broadcast_data(message, memo=f"beta-{i + 1}")
        return "local"


@app_state("write")
class WriteResults(AppState):
    def register(self):
        self.register_transition("terminal")

    def run(self):
        config, data = self.load("config"), self.load("data")
        result = self.load("result")
        beta = np.asarray(result["beta"], dtype=float)
        pd.DataFrame(
            {"term": data["terms"], "coefficient": beta, "std_error": result["std_errors"]}
        ).to_csv(os.path.join(OUTPUT_DIR, "coefficients.csv"), index=False, float_format="%.17g")
        p, _ = probabilities(data["x"], beta)
        predicted = (p >= 0.5).astype(int)
        y = data["y"].astype(int)
        pd.DataFrame(
            {"row": data["rows"], "y": y, "probability": p, "predicted": predicted}
        ).to_csv(os.path.join(OUTPUT_DIR, "predictions.csv"), index=False, float_format="%.17g")
        metrics = {
            "iterations": int(result["iterations"]),
            "converged": bool(result["converged"]),
            "log_likelihood": float(result["log_likelihood"]),
            "accuracy": float(np.mean(predicted == y)),
            "n": len(y),
            "n_total": int(result["n_total"]),
            "features": data["features"],
            "target": config["target"],
        }
        with open(os.path.join(OUTPUT_DIR, "metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)
            handle.write("\n")
        self.log(
            f"{'converged' if metrics['converged'] else 'stopped'} after "
            f"{metrics['iterations']} iterations; accuracy {metrics['accuracy']:.4f} "
            f"on {metrics['n']} rows"
        )
        return "terminal"
