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

    python3 -m venv /tmp/fw && /tmp/fw/bin/pip install scikit-learn xgboost lightgbm keras jax \
        torch lightning transformers tqdm
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


def pytorch_tqdm():
    """A plain PyTorch loop: a tqdm bar per epoch with the loss in its postfix (every
    step shown), then a line with the epoch's validation loss."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(0)
    X, y = torch.randn(64, 8), torch.randn(64, 1)
    model = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    truth = []
    for epoch in range(1, 4):
        bar = tqdm(range(8), desc=f"Epoch {epoch}", mininterval=0)
        for i in bar:
            xb, yb = X[i * 8 : (i + 1) * 8], y[i * 8 : (i + 1) * 8]
            loss = torch.nn.functional.mse_loss(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(loss=loss.item())
            truth.append({"name": "loss", "value": loss.item(), "step": i + 1, "epoch": epoch})
        with torch.no_grad():
            val = torch.nn.functional.mse_loss(model(X), y).item()
        print(f"epoch {epoch}: val_loss={val:.4f}")
        truth.append({"name": "val_loss", "value": val, "epoch": epoch})
    return truth


def lightning():
    """PyTorch Lightning's progress bar (every batch) with a logged train and val loss."""
    import lightning as L
    import torch

    L.seed_everything(0)
    X, y = torch.randn(64, 8), torch.randn(64, 1)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=8)
    truth = []

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(8, 1)

        def training_step(self, batch, i):
            loss = torch.nn.functional.mse_loss(self.lin(batch[0]), batch[1])
            self.log("train_loss", loss, prog_bar=True)
            return loss

        def validation_step(self, batch, i):
            self.log("val_loss", torch.nn.functional.mse_loss(self.lin(batch[0]), batch[1]), prog_bar=True)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Truth(L.Callback):
        def on_validation_end(self, trainer, module):
            truth.append(
                {
                    "name": "val_loss",
                    "value": float(trainer.callback_metrics["val_loss"]),
                    "epoch": trainer.current_epoch,
                }
            )

        def on_train_batch_end(self, trainer, module, outputs, batch, i):
            truth.append(
                {
                    "name": "train_loss",
                    "value": float(trainer.callback_metrics["train_loss"]),
                    "step": i + 1,
                    "epoch": trainer.current_epoch,
                }
            )

    trainer = L.Trainer(
        max_epochs=3,
        callbacks=[Truth(), L.pytorch.callbacks.TQDMProgressBar(refresh_rate=1)],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(Model(), data, data)
    return truth


def hf_trainer():
    """The Hugging Face Trainer on a tiny BERT made here (no download): its dicts, printed
    after the tqdm bar's updates, with the truth from `trainer.state.log_history`."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    model = BertForSequenceClassification(cfg)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            g = torch.Generator().manual_seed(i)
            return {"input_ids": torch.randint(0, 50, (8,), generator=g), "labels": torch.tensor(i % 2)}

    args = TrainingArguments(
        output_dir="/tmp/trainctl-corpus-hf",
        num_train_epochs=2,
        per_device_train_batch_size=8,
        logging_steps=1,
        eval_strategy="epoch",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Data(), eval_dataset=Data())
    trainer.train()
    truth = []
    for entry in trainer.state.log_history:
        for k, v in entry.items():
            # `total_flos` is kept in the history but never printed.
            if k in ("epoch", "step", "total_flos") or not isinstance(v, (int, float)):
                continue
            truth.append({"name": k, "value": float(v), "epoch": entry["epoch"]})
    return truth


def yolo():
    """Ultralytics YOLO trained from its yaml (no weights downloaded) on a tiny dataset
    made here (images with one box each), plots off (no font download); the truth from
    the results.csv its trainer writes per epoch (the numbers it prints)."""
    import csv
    import tempfile

    import numpy as np
    from PIL import Image
    from ultralytics import YOLO

    root = tempfile.mkdtemp(prefix="trainctl-corpus-yolo-")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        os.makedirs(f"{root}/images/{split}")
        os.makedirs(f"{root}/labels/{split}")
        for i in range(4):
            img = (rng.random((64, 64, 3)) * 255).astype("uint8")
            Image.fromarray(img).save(f"{root}/images/{split}/{i}.jpg")
            with open(f"{root}/labels/{split}/{i}.txt", "w") as f:
                f.write("0 0.5 0.5 0.4 0.4\n")
    with open(f"{root}/data.yaml", "w") as f:
        f.write(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: box\n")
    model = YOLO("yolov8n.yaml")
    model.train(
        data=f"{root}/data.yaml", epochs=2, imgsz=64, batch=4, workers=0, device="cpu",
        plots=False, amp=False, project=root, name="run", verbose=True, seed=0,
    )
    truth = []
    with open(f"{root}/run/results.csv") as f:
        for row in csv.DictReader(f):
            row = {k.strip(): v.strip() for k, v in row.items()}
            epoch = int(float(row["epoch"]))
            for k in ("train/box_loss", "train/cls_loss", "train/dfl_loss"):
                truth.append({"name": k.split("/")[1], "value": float(row[k]), "epoch": epoch})
            # The validation row's columns, as its header names them (`Box(P R mAP50 ...`).
            for k, name in (
                ("metrics/precision(B)", "p"),
                ("metrics/recall(B)", "r"),
                ("metrics/mAP50(B)", "map50"),
                ("metrics/mAP50-95(B)", "map50-95"),
            ):
                truth.append({"name": name, "value": float(row[k]), "epoch": epoch})
    return truth


RUNNERS = {
    "sklearn_mlp": sklearn_mlp,
    "xgboost": xgboost,
    "lightgbm": lightgbm,
    "keras_bar": keras_bar,
    "keras_lines": keras_lines,
    "pytorch_tqdm": pytorch_tqdm,
    "lightning": lightning,
    "hf_trainer": hf_trainer,
    "yolo": yolo,
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
