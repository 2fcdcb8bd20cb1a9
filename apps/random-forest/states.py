"""Federated random forest: every site grows trees on its own rows; the forest is their union.

Each site fits a scikit-learn RandomForestClassifier on its training rows and sends the fitted
trees (and the classes they predict) to the coordinator; the coordinator collects every
site's trees into one forest and broadcasts it; every site predicts its own test rows with
the global forest. Trees leave a site, rows never do (a tree's leaves do describe the
training rows that reached them).
"""

import json
import os
import warnings

import numpy as np
import pandas as pd
import yaml
from FeatureCloud.app.engine.app import AppState, Role, app_state
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

INPUT_DIR = "/mnt/input"
OUTPUT_DIR = "/mnt/output"
CONFIG_KEY = "fc_random_forest"
DEFAULTS = {
    "input_filename": "data.csv",
    "test_filename": "test.csv",
    "test_fraction": 0.25,
    "sep": ",",
    "target": None,
    "features": None,
    "n_estimators": 50,
    "max_depth": None,
    "seed": 0,
}


def read_config():
    config = dict(DEFAULTS)
    path = os.path.join(INPUT_DIR, "config.yml")
    if os.path.isfile(path):
        with open(path) as handle:
            config.update((yaml.safe_load(handle) or {}).get(CONFIG_KEY) or {})
    unknown = sorted(set(config) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"config.yml: {CONFIG_KEY}: unknown keys {unknown}")
    if config["target"] is None or config["target"] == "":
        raise ValueError(f"config.yml: {CONFIG_KEY}: target is required (the class column)")
    features = config["features"]
    if features is not None and (
        not isinstance(features, list) or not all(isinstance(f, str) for f in features)
    ):
        raise ValueError(f"config.yml: {CONFIG_KEY}: features must be a list of column names")
    if int(config["n_estimators"]) < 1:
        raise ValueError(f"config.yml: {CONFIG_KEY}: n_estimators must be >= 1")
    if config["max_depth"] is not None and int(config["max_depth"]) < 1:
        raise ValueError(f"config.yml: {CONFIG_KEY}: max_depth must be >= 1 or null")
    if not 0 < float(config["test_fraction"]) < 1:
        raise ValueError(f"config.yml: {CONFIG_KEY}: test_fraction must be between 0 and 1")
    config["n_estimators"] = int(config["n_estimators"])
    config["max_depth"] = None if config["max_depth"] is None else int(config["max_depth"])
    config["test_fraction"] = float(config["test_fraction"])
    config["seed"] = int(config["seed"])
    return config


def read_table(config, filename):
    data = pd.read_csv(os.path.join(INPUT_DIR, filename), sep=config["sep"])
    if config["target"] not in data.columns:
        raise ValueError(
            f"{filename}: no target column {config['target']!r} (columns: {list(data.columns)})"
        )
    return data


def choose_features(config, data, filename):
    target = config["target"]
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
    if not features:
        raise ValueError(f"{filename}: no numeric feature columns")
    return features


def complete_rows(data, columns, filename, log):
    complete = data[columns].dropna()
    if len(complete) < len(data):
        log(f"{filename}: dropped {len(data) - len(complete)} rows with missing values")
    if len(complete) == 0:
        raise ValueError(f"{filename}: no complete rows")
    return complete


def load_data(config, site_seed, log):
    """Training and test rows (features and target), with their row numbers in their file."""
    train_name, test_name = config["input_filename"], config["test_filename"]
    train = read_table(config, train_name)
    features = choose_features(config, train, train_name)
    columns = [*features, config["target"]]
    train = complete_rows(train, columns, train_name, log)
    if os.path.isfile(os.path.join(INPUT_DIR, test_name)):
        test = read_table(config, test_name)
        missing = [f for f in features if f not in test.columns]
        if missing:
            raise ValueError(f"{test_name}: feature columns {missing} are missing")
        test = complete_rows(test, columns, test_name, log)
        source = test_name
    else:
        train, test = train_test_split(
            train, test_size=config["test_fraction"], random_state=site_seed
        )
        train, test = train.sort_index(), test.sort_index()
        source = f"{config['test_fraction']:g} of {train_name} (no {test_name})"
    return features, train, test, source


def python_value(value):
    """A class label as a plain Python value, for JSON."""
    return value.item() if hasattr(value, "item") else value


def forest_probabilities(forest, x):
    """The mean of every tree's class probabilities, in the columns of ``forest["classes"]``.

    Each site's trees predict the columns of that site's classes; they are placed into the
    global classes' columns (a class a site never saw gets probability 0 from its trees).
    With the same classes everywhere this equals RandomForestClassifier.predict_proba of a
    forest holding all the trees.
    """
    classes = forest["classes"]
    total = np.zeros((x.shape[0], len(classes)))
    n_trees = 0
    for member in forest["members"]:
        columns = np.searchsorted(classes, member["classes"])
        for tree in member["estimators"]:
            total[:, columns] += tree.predict_proba(x)
            n_trees += 1
    return total / n_trees


@app_state("initial")
class LocalForest(AppState):
    """Grow this site's trees and send them to the coordinator."""

    def register(self):
        self.register_transition("union", Role.COORDINATOR)
        self.register_transition("predict", Role.PARTICIPANT)

    def run(self):
        config = read_config()
        site_seed = config["seed"] + sorted(self.clients).index(self.id)
        features, train, test, source = load_data(config, site_seed, self.log)
        self.store("config", config)
        self.store("data", {"features": features, "test": test})
        model = RandomForestClassifier(
            n_estimators=config["n_estimators"],
            max_depth=config["max_depth"],
            random_state=site_seed,
        )
        model.fit(train[features].to_numpy(dtype=float), train[config["target"]].to_numpy())
        self.log(
            f"grew {len(model.estimators_)} trees (seed {site_seed}) on {len(train)} rows, "
            f"{len(features)} features, classes {[python_value(c) for c in model.classes_]}; "
            f"{len(test)} test rows from {source}"
        )
        self.send_data_to_coordinator(
            {
                "site": self.id,
                "features": features,
                "classes": model.classes_,
                "estimators": model.estimators_,
                "n_train": len(train),
            },
            memo="trees",
        )
        return "union" if self.is_coordinator else "predict"


@app_state("union", Role.COORDINATOR)
class UnionForest(AppState):
    """Collect every site's trees into one forest and broadcast it."""

    def register(self):
        self.register_transition("predict", Role.COORDINATOR)

    def run(self):
        parts = sorted(self.gather_data(memo="trees"), key=lambda part: part["site"])
        features = parts[0]["features"]
        for part in parts[1:]:
            if part["features"] != features:
                raise ValueError(
                    f"sites disagree on the features: {parts[0]['site']} has {features}, "
                    f"{part['site']} has {part['features']}"
                )
        classes = np.unique(np.concatenate([part["classes"] for part in parts]))
        members = [
            {"site": p["site"], "classes": p["classes"], "estimators": p["estimators"]}
            for p in parts
        ]
        n_trees = sum(len(member["estimators"]) for member in members)
        self.log(
            f"global forest: {n_trees} trees from {len(parts)} sites "
            f"({sum(p['n_train'] for p in parts)} training rows), "
            f"classes {[python_value(c) for c in classes]}"
        )
        self.broadcast_data(
            {"features": features, "classes": classes, "members": members}, memo="forest"
        )
        return "predict"


@app_state("predict")
class Predict(AppState):
    """Predict this site's test rows with the global forest; write predictions and metrics."""

    def register(self):
        self.register_transition("terminal")

    def run(self):
        config, data = self.load("config"), self.load("data")
        forest = self.await_data(n=1, memo="forest")
        if forest["features"] != data["features"]:
            raise ValueError(
                f"the global forest uses {forest['features']}, this site has {data['features']}"
            )
        test = data["test"]
        classes = forest["classes"]
        probabilities = forest_probabilities(forest, test[data["features"]].to_numpy(dtype=float))
        predicted = classes[np.argmax(probabilities, axis=1)]
        y = test[config["target"]].to_numpy()
        table = pd.DataFrame({"row": test.index.to_numpy(), "y": y, "predicted": predicted})
        for j, label in enumerate(classes):
            table[f"prob_{python_value(label)}"] = probabilities[:, j]
        table.to_csv(os.path.join(OUTPUT_DIR, "predictions.csv"), index=False, float_format="%.17g")
        metrics = {
            "accuracy": float(np.mean(predicted == y)),
            "auc": self.auc(y, probabilities, classes),
            "n_test": len(y),
            "n_trees": sum(len(member["estimators"]) for member in forest["members"]),
            "classes": [python_value(c) for c in classes],
        }
        with open(os.path.join(OUTPUT_DIR, "metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)
            handle.write("\n")
        self.log(
            f"{metrics['n_test']} test rows: accuracy {metrics['accuracy']:.4f}, "
            f"AUC {metrics['auc']}"
        )
        return "terminal"

    def auc(self, y, probabilities, classes):
        """Binary: ROC AUC of the second (positive) class; more classes: one-vs-rest, macro.
        None (null) when it is undefined, e.g. the test rows hold a single class."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # undefined AUCs warn and give nan
                if len(classes) == 2:
                    auc = roc_auc_score(y == classes[1], probabilities[:, 1])
                else:
                    auc = roc_auc_score(
                        y, probabilities, multi_class="ovr", average="macro", labels=classes
                    )
        except (ValueError, Warning) as error:
            self.log(f"AUC undefined on these test rows: {error}")
            return None
        return float(auc) if np.isfinite(auc) else None
