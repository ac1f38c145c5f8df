#!/usr/bin/env python3
"""Capture real training logs, and the truth from each framework's own history object,
for the parser's recall test (tests/fixtures/frameworks/, read by tests/it/parser.rs).

Each framework runs on tiny synthetic data with its default console output, exactly as a
job's log would hold it (stdout and stderr to one file, no terminal). The truth is taken
from the framework's history object, never from reading the log: `loss_curve_`,
`evals_result()`, `record_evaluation`, `History.history`, `trainer.state.log_history`.
Truth names are the names trainctl should give (lowercase; `split/metric` where the
framework says `split's metric`); each point has the counter its line carries (`step` or
`epoch`).

    python3 -m venv /tmp/fw && /tmp/fw/bin/pip install scikit-learn xgboost lightgbm keras jax
    /tmp/fw/bin/python tools/corpus/generate.py [FRAMEWORK...]

Add a framework: a function below that trains, prints as the framework does, and returns
the truth; add its name to RUNNERS. Commit the .log and .truth.json it writes (small).
"""
import contextlib
import io
import json
import os
import subprocess
import sys

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures", "frameworks")


def sklearn_mlp():
    import warnings
    from sklearn.datasets import make_classification
    from sklearn.neural_network import MLPClassifier

    warnings.filterwarnings("ignore")
    X, y = make_classification(n_samples=300, n_features=10, random_state=0)
    m = MLPClassifier(hidden_layer_sizes=(16,), max_iter=15, verbose=True, random_state=0)
    m.fit(X, y)
    return [{"name": "loss", "value": v, "step": i + 1} for i, v in enumerate(m.loss_curve_)]


def _split():
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    X, y = make_classification(n_samples=400, n_features=10, random_state=0)
    return train_test_split(X, y, random_state=0)


def xgboost():
    import xgboost as xgb

    Xt, Xv, yt, yv = _split()
    m = xgb.XGBClassifier(n_estimators=12, max_depth=3, eval_metric=["logloss", "error"])
    m.fit(Xt, yt, eval_set=[(Xt, yt), (Xv, yv)], verbose=True)
    truth = []
    for ds, metrics in m.evals_result().items():
        for name, vals in metrics.items():
            truth += [{"name": f"{ds}-{name}", "value": v, "step": i} for i, v in enumerate(vals)]
    return truth


def lightgbm():
    import lightgbm as lgb

    Xt, Xv, yt, yv = _split()
    ev = {}
    lgb.train(
        {"objective": "binary", "metric": ["binary_logloss", "auc"], "verbose": -1, "num_leaves": 7},
        lgb.Dataset(Xt, yt),
        num_boost_round=12,
        valid_sets=[lgb.Dataset(Xt, yt), lgb.Dataset(Xv, yv)],
        valid_names=["train", "valid"],
        callbacks=[lgb.log_evaluation(1), lgb.record_evaluation(ev)],
    )
    truth = []
    for ds, metrics in ev.items():
        for name, vals in metrics.items():
            truth += [{"name": f"{ds}/{name}", "value": v, "step": i + 1} for i, v in enumerate(vals)]
    return truth


def _keras(verbose):
    os.environ["KERAS_BACKEND"] = "jax"
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 8)).astype("float32")
    y = (X[:, 0] > 0).astype("float32")
    keras.utils.set_random_seed(0)
    m = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1, activation="sigmoid")]
    )
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    h = m.fit(X, y, epochs=4, batch_size=32, validation_split=0.25, verbose=verbose)
    truth = []
    for name, vals in h.history.items():
        truth += [{"name": name, "value": float(v), "epoch": i + 1} for i, v in enumerate(vals)]
    return truth


def keras_bar():
    """Keras 3's progress bar (verbose=1) as it lands in a file: \\r updates, colours."""
    return _keras(1)


def keras_lines():
    """Keras 3's one line per epoch (verbose=2)."""
    return _keras(2)


RUNNERS = {
    "sklearn_mlp": sklearn_mlp,
    "xgboost": xgboost,
    "lightgbm": lightgbm,
    "keras_bar": keras_bar,
    "keras_lines": keras_lines,
}


def main():
    names = sys.argv[1:] or list(RUNNERS)
    if len(names) == 1 and os.environ.get("TRAINCTL_CORPUS_CHILD"):
        # In a child: train, printing to the log file the parent gave as stdout.
        truth = RUNNERS[names[0]]()
        sys.stdout.flush()
        sys.stderr.flush()
        with open(os.path.join(OUT, names[0] + ".truth.json"), "w") as f:
            json.dump(truth, f, indent=0)
        return
    os.makedirs(OUT, exist_ok=True)
    for n in names:
        # One process per framework, its stdout and stderr one file, as a job's log.
        with open(os.path.join(OUT, n + ".log"), "wb") as log:
            env = dict(os.environ, TRAINCTL_CORPUS_CHILD="1", PYTHONUNBUFFERED="1")
            subprocess.run([sys.executable, __file__, n], stdout=log, stderr=subprocess.STDOUT, env=env, check=True)
        print(n, "ok")


if __name__ == "__main__":
    main()
