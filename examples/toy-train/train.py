#!/usr/bin/env python3
"""A deterministic toy training job for trainctl (Python stdlib only).

Logistic regression on generated data with a fixed seed. It prints metrics in several of
the formats trainctl parses (Keras-style `Epoch i/N`, `key=value` step lines, JSON
progress records, Hugging Face-style dicts), writes a checkpoint every epoch, resumes
from `TRAINCTL_RESUME_FROM` (or, with --resume, the newest checkpoint) with exactly the
same final result as an uninterrupted run, and leaves `model.json`.

SIGTERM is honoured at the next step: a checkpoint is written and the process exits 143.
"""

import argparse
import glob
import json
import math
import os
import random
import signal
import sys
import time

FEATURES = 8
SAMPLES = 512
BATCH = 32

stop_requested = False


def on_term(signum, frame):
    global stop_requested
    stop_requested = True


def make_data(seed):
    rng = random.Random(seed)
    true_w = [rng.uniform(-2, 2) for _ in range(FEATURES)]
    xs, ys = [], []
    for _ in range(SAMPLES):
        x = [rng.gauss(0, 1) for _ in range(FEATURES)]
        z = sum(w * v for w, v in zip(true_w, x)) + rng.gauss(0, 0.5)
        xs.append(x)
        ys.append(1.0 if z > 0 else 0.0)
    return xs, ys


def sigmoid(z):
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


def evaluate(w, b, xs, ys):
    loss, correct = 0.0, 0
    for x, y in zip(xs, ys):
        p = sigmoid(sum(wi * xi for wi, xi in zip(w, x)) + b)
        p = min(max(p, 1e-12), 1 - 1e-12)
        loss -= y * math.log(p) + (1 - y) * math.log(1 - p)
        correct += (p >= 0.5) == (y == 1.0)
    return loss / len(xs), correct / len(xs)


def save_checkpoint(path, state):
    tmp = path + ".part"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def newest_checkpoint(ckpt_dir):
    found = sorted(glob.glob(os.path.join(ckpt_dir, "epoch-*.json")))
    return found[-1] if found else None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="model.json")
    ap.add_argument("--resume", action="store_true", help="resume from the newest checkpoint")
    ap.add_argument("--stop-after-epoch", type=int, default=0, help="exit 0 after this epoch (tests)")
    ap.add_argument("--fail-at-epoch", type=int, default=0, help="exit 3 at this epoch (tests)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, on_term)
    step_sleep = float(os.environ.get("TOY_STEP_SLEEP", "0"))
    # Tests: after step TOY_HOLD_AT_STEP, wait until the file TOY_HOLD_FILE exists.
    hold_at = int(os.environ.get("TOY_HOLD_AT_STEP", "0"))
    hold_file = os.environ.get("TOY_HOLD_FILE", "")
    ckpt_dir = os.environ.get("TRAINCTL_CHECKPOINT_DIR", "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)

    xs, ys = make_data(args.seed)
    w = [0.0] * FEATURES
    b = 0.0
    start_epoch = 1
    rng = random.Random(args.seed + 1)
    resume_from = os.environ.get("TRAINCTL_RESUME_FROM") or (
        newest_checkpoint(ckpt_dir) if args.resume else None
    )
    if resume_from:
        with open(resume_from) as f:
            state = json.load(f)
        w, b = state["w"], state["b"]
        start_epoch = state["epoch"] + 1
        v = state["rng"]
        rng.setstate((v[0], tuple(v[1]), v[2]))
        print(f"resumed from {resume_from} at epoch {start_epoch}", flush=True)
    else:
        for old in glob.glob(os.path.join(ckpt_dir, "epoch-*.json")):
            os.remove(old)

    steps_per_epoch = SAMPLES // BATCH
    global_step = (start_epoch - 1) * steps_per_epoch
    for epoch in range(start_epoch, args.epochs + 1):
        print(f"Epoch {epoch}/{args.epochs}", flush=True)
        # A fresh permutation per epoch: it depends only on the RNG state in the checkpoint.
        order = list(range(SAMPLES))
        rng.shuffle(order)
        for s in range(steps_per_epoch):
            idx = order[s * BATCH:(s + 1) * BATCH]
            gw = [0.0] * FEATURES
            gb = 0.0
            loss = 0.0
            for i in idx:
                x, y = xs[i], ys[i]
                p = sigmoid(sum(wi * xi for wi, xi in zip(w, x)) + b)
                pc = min(max(p, 1e-12), 1 - 1e-12)
                loss -= y * math.log(pc) + (1 - y) * math.log(1 - pc)
                for k in range(FEATURES):
                    gw[k] += (p - y) * x[k]
                gb += p - y
            w = [wi - args.lr * g / BATCH for wi, g in zip(w, gw)]
            b -= args.lr * gb / BATCH
            global_step += 1
            print(f"step={global_step} loss={loss / BATCH:.6f} lr={args.lr}", flush=True)
            if step_sleep:
                time.sleep(step_sleep)
            if global_step == hold_at and hold_file:
                while not os.path.exists(hold_file) and not stop_requested:
                    time.sleep(0.02)
            if stop_requested:
                break
        train_loss, acc = evaluate(w, b, xs, ys)
        state = {"epoch": epoch, "w": w, "b": b, "rng": list(rng.getstate())}
        if stop_requested:
            # Mid-epoch state cannot be resumed exactly; keep the last full epoch's checkpoint.
            print("SIGTERM: stopping; the last full epoch's checkpoint is the resume point", flush=True)
            sys.exit(143)
        save_checkpoint(os.path.join(ckpt_dir, f"epoch-{epoch:04d}.json"), state)
        print(json.dumps({"type": "progress", "data": {
            "epoch": epoch, "total_epochs": args.epochs, "train_loss": train_loss, "accuracy": acc}}), flush=True)
        print({"loss": train_loss, "learning_rate": args.lr, "epoch": float(epoch)}, flush=True)
        if args.fail_at_epoch == epoch:
            print(f"failing at epoch {epoch} as asked", flush=True)
            sys.exit(3)
        if args.stop_after_epoch == epoch:
            print(f"stopping after epoch {epoch} as asked", flush=True)
            return
    final_loss, acc = evaluate(w, b, xs, ys)
    print(f"{steps_per_epoch}/{steps_per_epoch} [==============================] - val_loss: {final_loss:.4f} - val_accuracy: {acc:.4f}", flush=True)
    print(f"final_loss={final_loss!r} final_accuracy={acc!r}", flush=True)
    model = {"w": w, "b": b, "final_loss": final_loss, "accuracy": acc, "epochs": args.epochs}
    save_checkpoint(args.out, model)


if __name__ == "__main__":
    main()
