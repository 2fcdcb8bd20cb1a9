"""Federated principal component analysis, exact.

Round 1: every site sends its row count, column sums and (when scaling) the sums of squares
of its columns about its own mean; the coordinator pools them into the global mean and
standard deviation and broadcasts them.
Round 2: every site centres (and scales) its rows with the global values and sends the
p x p scatter matrix; the coordinator adds them up, divides by N - 1 (the pooled covariance
or correlation matrix), takes its eigendecomposition and broadcasts the top k loadings and
all eigenvalues. Every site projects its own rows and writes the results.
Only counts, sums and p x p matrices leave a site, never rows.
"""

import json
import os

import numpy as np
import pandas as pd
import yaml
from FeatureCloud.app.engine.app import AppState, Role, app_state

INPUT_DIR = "/mnt/input"
OUTPUT_DIR = "/mnt/output"
DEFAULTS = {"input_filename": "data.csv", "sep": ",", "k": 2, "scale": False, "exclude": []}
FLOAT = "%.17g"


def read_config():
    config = dict(DEFAULTS)
    path = os.path.join(INPUT_DIR, "config.yml")
    if os.path.isfile(path):
        with open(path) as handle:
            config.update((yaml.safe_load(handle) or {}).get("fc_pca") or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config.yml: fc_pca: unknown keys {unknown}; known: {sorted(DEFAULTS)}")
    if isinstance(config["k"], bool) or not isinstance(config["k"], int) or config["k"] < 1:
        raise ValueError(f"config.yml: fc_pca.k must be a positive integer, not {config['k']!r}")
    if not isinstance(config["scale"], bool):
        raise ValueError(f"config.yml: fc_pca.scale must be true or false, not {config['scale']!r}")
    if isinstance(config["exclude"], str):
        config["exclude"] = [config["exclude"]]
    if not isinstance(config["exclude"], list):
        raise ValueError("config.yml: fc_pca.exclude must be a list of column names")
    return config


def read_matrix(config):
    """The site's numeric columns, minus the excluded ones, as a float matrix."""
    data = pd.read_csv(os.path.join(INPUT_DIR, config["input_filename"]), sep=config["sep"])
    missing = [column for column in config["exclude"] if column not in data.columns]
    if missing:
        raise ValueError(f"config.yml: fc_pca.exclude names columns not in the data: {missing}")
    numeric = data.drop(columns=config["exclude"]).select_dtypes("number")
    if numeric.shape[1] == 0:
        raise ValueError("no numeric columns left to analyse")
    if numeric.isna().any().any():
        columns = list(numeric.columns[numeric.isna().any()])
        raise ValueError(f"missing values in {columns}; impute or exclude them first")
    return list(numeric.columns), numeric.to_numpy(dtype=float)


def centred(x, centre):
    z = x - np.asarray(centre["mean"])
    if centre["scale"] is not None:
        z = z / np.asarray(centre["scale"])
    return z


def check_features(parts):
    features = parts[0]["features"]
    for part in parts[1:]:
        if part["features"] != features:
            raise ValueError(f"sites disagree on the features: {features} vs {part['features']}")
    return features


def by_site(part):
    """Sites' parts in a fixed order, whatever order they arrived in: the same sums, to the
    last bit, on every run."""
    return part["site"]


@app_state("initial")
class LocalMoments(AppState):
    def register(self):
        self.register_transition("pool_moments", Role.COORDINATOR)
        self.register_transition("local_scatter", Role.PARTICIPANT)

    def run(self):
        config = read_config()
        features, x = read_matrix(config)
        if config["k"] > len(features):
            raise ValueError(f"k = {config['k']} but there are only {len(features)} features")
        self.store("config", config)
        self.store("features", features)
        self.store("x", x)
        self.log(f"{x.shape[0]} rows, {x.shape[1]} features: {features}")
        n = x.shape[0]
        sums = x.sum(axis=0)
        # sums of squares about the local mean: the same information as the raw sums of
        # squares (given n and the sums), and pooled without cancellation
        squares = ((x - sums / n) ** 2).sum(axis=0) if config["scale"] and n > 0 else None
        self.send_data_to_coordinator(
            {"site": self.id, "features": features, "n": n, "sums": sums, "squares": squares},
            memo="pca-moments",
        )
        return "pool_moments" if self.is_coordinator else "local_scatter"


@app_state("pool_moments", Role.COORDINATOR)
class PoolMoments(AppState):
    def register(self):
        self.register_transition("local_scatter", Role.COORDINATOR)

    def run(self):
        config = self.load("config")
        parts = sorted(self.gather_data(memo="pca-moments"), key=by_site)
        features = check_features(parts)
        total = sum(part["n"] for part in parts)
        if total < 2:
            raise ValueError(f"PCA needs at least 2 rows over all sites, got {total}")
        mean = sum(part["sums"] for part in parts) / total
        scale = None
        if config["scale"]:
            # Chan et al.: pooled sum of squares = local ones + n_i (mean_i - mean)^2
            squares = sum(
                part["squares"] + part["n"] * (part["sums"] / part["n"] - mean) ** 2
                for part in parts
                if part["n"] > 0
            )
            scale = np.sqrt(squares / (total - 1))
            constant = [f for f, s in zip(features, scale, strict=True) if not s > 0]
            if constant:
                raise ValueError(f"cannot scale constant columns {constant}; exclude them")
        self.log(f"pooled {len(parts)} sites, {total} rows")
        self.broadcast_data({"n": total, "mean": mean, "scale": scale}, memo="pca-centre")
        return "local_scatter"


@app_state("local_scatter")
class LocalScatter(AppState):
    def register(self):
        self.register_transition("decompose", Role.COORDINATOR)
        self.register_transition("project", Role.PARTICIPANT)

    def run(self):
        centre = self.await_data(n=1, memo="pca-centre")
        self.store("centre", centre)
        z = centred(self.load("x"), centre)
        self.send_data_to_coordinator(
            {"site": self.id, "features": self.load("features"), "scatter": z.T @ z},
            memo="pca-scatter",
        )
        return "decompose" if self.is_coordinator else "project"


@app_state("decompose", Role.COORDINATOR)
class Decompose(AppState):
    def register(self):
        self.register_transition("project", Role.COORDINATOR)

    def run(self):
        config = self.load("config")
        centre = self.load("centre")
        parts = sorted(self.gather_data(memo="pca-scatter"), key=by_site)
        check_features(parts)
        covariance = sum(part["scatter"] for part in parts) / (centre["n"] - 1)
        eigenvalues, eigenvectors = np.linalg.eigh(covariance)
        order = np.argsort(eigenvalues, kind="stable")[::-1]
        eigenvalues, eigenvectors = eigenvalues[order], eigenvectors[:, order]
        # a deterministic sign: each component's largest-magnitude loading is positive
        largest = eigenvectors[np.argmax(np.abs(eigenvectors), axis=0), np.arange(len(order))]
        eigenvectors = eigenvectors * np.where(largest < 0, -1.0, 1.0)
        k = config["k"]
        self.log(f"top {k} eigenvalues {eigenvalues[:k].tolist()} of {eigenvalues.sum()}")
        self.broadcast_data(
            {"loadings": eigenvectors[:, :k], "eigenvalues": eigenvalues}, memo="pca-result"
        )
        return "project"


@app_state("project")
class Project(AppState):
    def register(self):
        self.register_transition("terminal")

    def run(self):
        features = self.load("features")
        centre = self.load("centre")
        result = self.await_data(n=1, memo="pca-result")
        loadings, eigenvalues = result["loadings"], result["eigenvalues"]
        k = loadings.shape[1]
        names = [f"PC{i + 1}" for i in range(k)]

        def write(name, table):
            table.to_csv(os.path.join(OUTPUT_DIR, name), index=False, float_format=FLOAT)

        write(
            "eigenvalues.csv",
            pd.DataFrame(
                {
                    "component": names,
                    "eigenvalue": eigenvalues[:k],
                    "variance_explained": eigenvalues[:k] / eigenvalues.sum(),
                }
            ),
        )
        loading_table = pd.DataFrame(loadings, columns=names)
        loading_table.insert(0, "feature", features)
        write("loadings.csv", loading_table)
        x = self.load("x")
        projections = pd.DataFrame(centred(x, centre) @ loadings, columns=names)
        projections.insert(0, "row", np.arange(x.shape[0]))
        write("projections.csv", projections)
        summary = {
            "k": k,
            "n_samples": int(centre["n"]),
            "features": features,
            "mean": np.asarray(centre["mean"]).tolist(),
            "scale": None if centre["scale"] is None else np.asarray(centre["scale"]).tolist(),
        }
        with open(os.path.join(OUTPUT_DIR, "pca.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
            handle.write("\n")
        self.log(f"projected {x.shape[0]} rows onto {k} components")
        return "terminal"
