"""Data-parallel training: jax DataParallel (2 host devices) and torch.distributed (2 ranks, gloo).

What is asserted to be equal, and how:

* jax, ``XLA_FLAGS=--xla_force_host_platform_device_count=2``: three epochs of
  ``Trainer.fit`` (schedule callback decaying the hypernet lr, multipliers, a partial last batch of
  3 that falls back to replicated placement) with ``JaxDataParallel`` vs the
  same run on one device, TinyIQA *with* BatchNorm (jax computes the global
  batch, so BN is global too): every model and optimizer variable within
  1e-5, the loss / train SRCC / val SRCC history within 1e-5.
* torch, 2 processes on 127.0.0.1 with gloo (the environment torchrun sets):
  the same run, TinyIQA *without* BatchNorm (per-rank BN is documented to
  differ), vs one process on the same global batches: every variable within
  TOLERANCE; rank 0 and rank 1 bit-identical, also with BatchNorm.
* torch, ``torchrun --nproc-per-node 2 -m keras_hyperiqa fit``: the run
  directory is complete, metrics.csv has one row per epoch, and rank 1 made
  no write, rename, mkdir or delete under it (audit hook); then a resume
  under torchrun continues from rank 0's checkpoint.

The workers are this file run as a script (``python tests/test_distributed.py MODE ...``).
"""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np

from keras_hyperiqa.numerics import training_tolerance

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import noisy_ramps, state_difference, write_csv_dataset  # noqa: E402

HERE = os.path.abspath(__file__)
EPOCHS = 3


def scenario(batchnorm, strategy=None):
    """TinyIQA, HyperAdam + HyperIQASchedule, EPOCHS epochs on 15 patches in batches of 4."""
    import keras

    from keras_hyperiqa.training.optimizer import HyperAdam
    from keras_hyperiqa.training.schedule import Fixes, HyperIQASchedule
    from doubles import (
        ArrayEvalSource, ArrayTrainSource, TinyIQA, toy_dataset)
    from keras_hyperiqa.training.trainer import Trainer

    model = TinyIQA(batchnorm=batchnorm)
    rng = np.random.default_rng(42)
    for v in model.trainable_variables:
        v.assign(rng.normal(0, 0.4, size=v.shape).astype(np.float32))
    images, labels = toy_dataset(n_images=9)
    # 5 images x 3 patches = 15: batches 4, 4, 4, 3 (the last splits 2 / 1 on torch)
    train = ArrayTrainSource(images[:5], labels[:5], patches_per_image=3, batch_size=4, seed=3)
    val = ArrayEvalSource(images[5:], labels[5:])
    opt = HyperAdam(learning_rate=1e-2, weight_decay=5e-4)
    trainer = Trainer(model, opt, strategy=strategy)
    slot_ids = [id(v) for v in opt.variables]
    schedule = HyperIQASchedule(opt, model.backbone_variables, model.hypernet_variables,
                                lr=1e-2, lr_ratio=10, fixes=Fixes(backbone_lr_decays=False),
                                decay_every=1)
    history = trainer.fit(train, EPOCHS, val=val, callbacks=[schedule], verbose=0)
    assert [id(v) for v in opt.variables] == slot_ids  # never rebuilt
    out = {f"w{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
    out.update({f"o{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(opt.variables)})
    out["opt_paths"] = np.array([v.path for v in opt.variables])
    for key in ("loss", "train_srcc", "val_srcc", "hypernet_lr", "backbone_lr"):
        out[key] = np.array([row[key] for row in history])
    out["iterations"] = np.array(int(keras.ops.convert_to_numpy(opt.iterations)))
    return out


# TinyIQA's reduction length (kernels 48x8, 8x6, 6x1: 48 + 8 + 6), the global batch and the
# steps of scenario(): float32 error growth over 12 Adam steps of a 62-long network
# (keras_hyperiqa.numerics: T * 4 sqrt(2 (3 n + batch)) * 2**-24, about 5.6e-5 of each
# quantity's size). A real data-parallel bug (per-replica BatchNorm statistics, a
# gradient summed instead of averaged, a dropped shard) moves the weights by 1e-3 and more.
TOLERANCE = training_tolerance(62, steps=4 * EPOCHS, batch=4)


def _max_diff(a, b):
    return state_difference(a, b, [str(p) for p in a["opt_paths"]], skip=("opt_paths",))


# ------------------------------------------------------------------ workers
def _jax_worker(path):
    import jax
    import keras

    from keras_hyperiqa.training import distributed

    assert jax.device_count() == 2, jax.devices()
    single = scenario(batchnorm=True)
    strategy = distributed.JaxDataParallel()
    x, y = strategy.place(np.zeros((4, 4, 4, 3), np.float32), np.zeros(4, np.float32))
    assert len(x.sharding.device_set) == 2 and x.addressable_shards[0].data.shape == (2, 4, 4, 3)
    parallel = scenario(batchnorm=True, strategy=strategy)
    keras.distribution.set_distribution(None)
    np.savez(path, diff=_max_diff(single, parallel), iterations=parallel["iterations"],
             hypernet_lr=parallel["hypernet_lr"], loss=parallel["loss"])


def _torch_worker(path):
    from keras_hyperiqa.training import distributed

    strategy = distributed.init_torch_from_env()
    assert strategy.world_size == 2
    plain = scenario(batchnorm=False, strategy=strategy)
    bn = scenario(batchnorm=True, strategy=strategy)
    np.savez(f"{path}.rank{strategy.rank}.npz", **{f"plain_{k}": v for k, v in plain.items()},
             **{f"bn_{k}": v for k, v in bn.items()})
    import torch.distributed as dist

    dist.destroy_process_group()


def _fit_worker(log, argv):
    """Rank 1 records every write-like filesystem event (audit hook), then runs the CLI."""
    if os.environ.get("RANK") == "1":
        events = []
        write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

        def hook(event, args):
            if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
                mode, flags = args[1], args[2]
                if (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                        isinstance(flags, int) and flags & write_flags):
                    events.append(f"open {os.fsdecode(args[0])}")
            elif event in ("os.rename", "os.remove", "os.mkdir", "os.rmdir", "shutil.copyfile"):
                events.append(f"{event} {args[0]}")

        sys.addaudithook(hook)
        import atexit

        atexit.register(lambda: open(log, "w").write("\n".join(events)))
    from keras_hyperiqa.cli import main

    main(argv)


# -------------------------------------------------------------------- tests
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1")
    env.update(extra)
    return env


def _check(proc):
    assert proc.returncode == 0, (proc.stdout or "")[-2000:] + (proc.stderr or "")[-4000:]


def test_jax_data_parallel_equals_single_device(tmp_path):
    path = tmp_path / "jax.npz"
    proc = subprocess.run(
        [sys.executable, HERE, "jax", str(path)], capture_output=True, text=True, timeout=300,
        env=_env(KERAS_BACKEND="jax", XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    _check(proc)
    data = np.load(path)
    assert int(data["iterations"]) == 4 * EPOCHS
    assert data["hypernet_lr"].tolist() == [1e-1, 1e-1, 1e-2]  # the schedule ran
    print(f"\njax 2 devices vs 1: {float(data['diff']):.2e} relative (bound {TOLERANCE:.2e})")
    assert float(data["diff"]) < TOLERANCE, (float(data["diff"]), TOLERANCE)


def _torchrun(args, timeout=300):
    port = _free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=_env(KERAS_BACKEND="torch", MASTER_ADDR="127.0.0.1"))


def test_torch_two_ranks_equal_single_process(tmp_path):
    import keras

    assert keras.backend.backend() == "torch"
    proc = _torchrun([HERE, "torch", str(tmp_path / "out")])
    _check(proc)
    single = scenario(batchnorm=False)
    ranks = [dict(np.load(tmp_path / f"out.rank{r}.npz")) for r in (0, 1)]
    for key in ranks[0]:  # every rank holds the same state, BatchNorm or not
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key], err_msg=key)
    plain = {k[len("plain_"):]: v for k, v in ranks[0].items() if k.startswith("plain_")}
    assert int(plain["iterations"]) == 4 * EPOCHS
    print(f"\ntorch 2 ranks vs 1 process: {_max_diff(single, plain):.2e} relative (bound {TOLERANCE:.2e})")
    assert _max_diff(single, plain) < TOLERANCE, (_max_diff(single, plain), TOLERANCE)


def test_torch_process_group_backend_nccl_only_with_a_gpu_per_rank():
    from keras_hyperiqa.training.distributed import torch_process_group_backend as choose

    # (cuda available, GPUs, local rank, local ranks) -> (backend, GPU index)
    assert choose(False, 0, 1, 2) == ("gloo", None)
    assert choose(False, 4, 1, 2) == ("gloo", None)  # CUDA unusable: device count ignored
    assert choose(True, 2, 1, 2) == ("nccl", 1)
    assert choose(True, 8, 3, 4) == ("nccl", 3)
    # fewer GPUs than ranks: nccl would put two ranks on one GPU and fail
    assert choose(True, 1, 0, 2) == ("gloo", 0)
    assert choose(True, 1, 1, 2) == ("gloo", 0)
    assert choose(True, 2, 3, 4) == ("gloo", 1)
    assert choose(True, 0, 0, 1) == ("gloo", None)
    assert choose(True, 1, 0, 1) == ("nccl", 0)


def _tiny_dataset(root):
    write_csv_dataset(root, noisy_ramps(16, 4, 15, (228, 232)), [100 - 25 * (i % 4) for i in range(16)],
                      [f"c{i // 2}" for i in range(16)])


def test_torchrun_fit_writes_the_run_directory_once_and_resumes(tmp_path):
    data, out = tmp_path / "data", tmp_path / "run"
    _tiny_dataset(data)
    log = tmp_path / "rank1-writes.txt"
    fit = ["fit", "--dataset", "csv", "--root", str(data), "--out", str(out), "--backbone",
           "resnet_tiny", "--backbone-weights", "none", "--epochs", "1", "--batch-size", "6",
           "--train-patches", "1", "--test-patches", "1", "--val-fraction", "0", "--workers", "1"]
    _check(_torchrun([HERE, "fit-worker", str(log), *fit]))
    for name in ("config.json", "splits.json", "metrics.csv", "model.keras", "summary.json",
                 "rounds/r0/last.npz", "rounds/r0/done.json", "rounds/r0/test_predictions.csv"):
        assert (out / name).is_file(), name
    writes = [line for line in log.read_text().splitlines() if str(out) in line]
    assert writes == [], writes  # rank 1 wrote nothing into the run directory
    assert json.loads((out / "config.json").read_text())["backend"] == "torch"

    # Interrupted-run stand-in: ask for a second epoch and resume from rank 0's checkpoint.
    cfg = json.loads((out / "config.json").read_text())
    cfg["options"]["epochs"] = 2
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "rounds" / "r0" / "done.json").unlink()
    proc = _torchrun([HERE, "fit-worker", str(log), "fit", "--resume", str(out)])
    _check(proc)
    assert proc.stdout.count("resuming at epoch 1") >= 1
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["round"], r["epoch"]) for r in rows] == [("0", "0"), ("0", "1")]
    writes = [line for line in log.read_text().splitlines() if str(out) in line]
    assert writes == [], writes
    assert json.loads((out / "summary.json").read_text())["rounds_run"] == 1


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "jax":
        _jax_worker(sys.argv[2])
    elif mode == "torch":
        _torch_worker(sys.argv[2])
    elif mode == "fit-worker":
        _fit_worker(sys.argv[2], sys.argv[3:])
