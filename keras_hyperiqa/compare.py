"""Backend comparison behind ``keras-hyperiqa compare``: Keras-torch vs Keras-jax.

:func:`compare_backends` runs one configuration under ``KERAS_BACKEND=torch``
and ``KERAS_BACKEND=jax`` (one subprocess each) on the same data, seed and
initial weights and reports forward parity, per-epoch loss / SRCC / PLCC side
by side, step time and peak memory. Writes ``comparison.md`` and
``comparison.json``; ``result["parity_ok"]`` is False when the forward scores
differ by more than ``tolerance`` (relative). The worker protocol and helpers
here are also used by the benchmarks (``benchmarks/bench.py``).

Peak memory: the subprocess's ``ru_maxrss`` (host), and on a GPU
``torch.cuda.max_memory_allocated`` or jax's ``peak_bytes_in_use``.

This module imports neither keras nor torch at import time: the parent
process only spawns workers (``python -m keras_hyperiqa.compare --worker KIND
SPEC``), so it can run from a process already committed to either backend.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from keras_hyperiqa.atomic import write_atomic

# --------------------------------------------------------------- helpers

def _peak_rss_mib() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def _current_rss_mib():
    """This process's resident memory now (Linux; else the peak so far)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return _peak_rss_mib()


def _device_peak_mib(backend: str):
    try:
        if backend == "torch":
            import torch

            if torch.cuda.is_available():
                return torch.cuda.max_memory_allocated() / 2**20
        else:
            import jax

            dev = jax.devices()[0]
            if dev.platform != "cpu":
                stats = dev.memory_stats() or {}
                if "peak_bytes_in_use" in stats:
                    return stats["peak_bytes_in_use"] / 2**20
    except Exception:  # memory stats are best effort
        return None
    return None


def _median(xs):
    return float(statistics.median(xs)) if xs else math.nan


def _env(backend: str | None, device: str) -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if backend:
        env["KERAS_BACKEND"] = backend
    if device == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        env.pop("JAX_PLATFORMS", None)
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def _spawn(kind: str, spec: dict, out_dir: Path, backend: str | None, device: str, timeout: float) -> dict:
    """Run a worker in a fresh Python; return the JSON it wrote."""
    name = f"{kind}-{spec.get('impl', backend or 'none')}"
    spec_path = out_dir / f".{name}.spec.json"
    result_path = out_dir / f".{name}.result.json"
    spec = dict(spec, result=str(result_path))
    spec_path.write_text(json.dumps(spec))
    if result_path.exists():
        result_path.unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "keras_hyperiqa.compare", "--worker", kind, str(spec_path)],
        env=_env(backend, device), capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0 or not result_path.exists():
        raise RuntimeError(f"{name} worker failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    result = json.loads(result_path.read_text())
    spec_path.unlink()
    result_path.unlink()
    return result


def _versions() -> dict:
    from keras_hyperiqa.compat import installed_versions

    out = {"python": platform.python_version(), "machine": platform.machine(),
           "cpus": os.cpu_count(),
           **installed_versions(("keras", "torch", "jax", "timm", "keras-hub", "numpy"))}
    try:
        out["loadavg"] = list(os.getloadavg())
    except OSError:
        out["loadavg"] = None
    return out


def _write(out_dir: Path, stem: str, result: dict, markdown: str):
    write_atomic(out_dir / f"{stem}.json", json.dumps(result, indent=2, default=_json_default) + "\n")
    write_atomic(out_dir / f"{stem}.md", markdown)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _fmt(v, spec=".4g"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


# --------------------------------------------------------------- data

def make_iqa_images(folder, n_scenes: int = 2, size: int = 256, seed: int = 0):
    """Demo-style images (scene x {pristine, blur/noise/jpeg/contrast at levels 1, 3, 5}).

    Returns ``[(path, mos, scene)]``; MOS from the level as in the demo set.
    """
    from PIL import Image

    from keras_hyperiqa.data import demo

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for scene in range(n_scenes):
        base = demo.make_scene(seed, scene, size=size)
        rng = np.random.default_rng([seed, scene, 1])
        items = [("pristine", 0, base)]
        for kind in demo.DISTORTIONS:
            for level in (1, 3, 5):
                items.append((kind, level, demo.distort(base, kind, level, rng)))
        for kind, level, img in items:
            path = folder / f"s{scene:02d}_{kind}{level}.png"
            Image.fromarray(img).save(path, compress_level=1)
            rows.append((str(path), demo.MOS_BY_LEVEL[level], scene))
    return rows


# --------------------------------------------------------------- compare

def compare_backends(out_dir, backbone: str = "resnet_tiny", epochs: int = 1, batch_size: int = 8,
                     seed: int = 0, tolerance: float | None = None, patch_size: int = 224, scenes: int = 3,
                     image_size: int = 256, train_patches: int = 2, test_patches: int = 1,
                     parity_patches: int = 8, lr: float = 5e-4, lr_ratio: float = 4.0,
                     backends=("torch", "jax"), device: str = "cpu", timeout: float = 3600,
                     verbose: bool = False) -> dict:
    """Train and score the same configuration under each Keras backend; compare.

    The initial weights (``init.weights.h5``) and the parity patches
    (``parity_patches.npz``) are made once under torch with ``seed`` and
    saved in ``out_dir``; every backend loads them. Data: demo-style images
    of ``scenes`` scenes (the last scene held out for testing), through
    ``PatchDataset`` (deterministic in the seed). Returns the dict written to
    ``comparison.json``; ``parity_ok`` says whether the forward scores agree
    within ``tolerance`` (max abs difference over the max abs score); by
    default the float32 bound of the model's reduction length
    (:func:`keras_hyperiqa.numerics.forward_tolerance`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if scenes < 2:
        raise ValueError("compare_backends needs at least 2 scenes (one is held out)")
    rows = make_iqa_images(out / "images", n_scenes=scenes, size=image_size, seed=seed)
    train_items = [(p, y) for p, y, s in rows if s < scenes - 1]
    test_items = [(p, y) for p, y, s in rows if s == scenes - 1]
    config = dict(backbone=backbone, epochs=int(epochs), batch_size=int(batch_size), seed=int(seed),
                  patch_size=int(patch_size), train_patches=int(train_patches),
                  test_patches=int(test_patches), parity_patches=int(parity_patches), lr=float(lr),
                  lr_ratio=float(lr_ratio), train_images=len(train_items), test_images=len(test_items),
                  tolerance=None if tolerance is None else float(tolerance), device=device,
                  backends=list(backends))
    spec = dict(config, train_items=train_items, test_items=test_items,
                weights=str(out / "init.weights.h5"), patches=str(out / "parity_patches.npz"))
    t0 = time.perf_counter()
    # The weights and patches are made under torch: by the torch run itself
    # when it goes first (one interpreter start less), else by its own worker.
    init_in_run = backends[0] == "torch"
    if not init_in_run:
        _spawn("compare-init", spec, out, "torch", device, timeout)
    runs = {}
    for i, backend in enumerate(backends):
        if verbose:
            print(f"compare: running {backend} ...", file=sys.stderr, flush=True)
        runs[backend] = _spawn("compare-run", dict(spec, impl=backend, init=init_in_run and i == 0),
                               out, backend, device, timeout)
    if tolerance is None:
        from keras_hyperiqa.numerics import forward_tolerance

        tolerance = config["tolerance"] = forward_tolerance(runs[backends[0]]["reduction_length"])
    result = {"config": config, "versions": _versions(), "backends": runs}
    result.update(_compare_results(runs, list(backends), tolerance))
    result["wall_s"] = time.perf_counter() - t0
    _write(out, "comparison", result, _comparison_md(result))
    return result


def _compare_results(runs: dict, backends: list, tolerance: float) -> dict:
    ref_name = backends[0]
    ref = np.asarray(runs[ref_name]["scores"], dtype=np.float64)
    parity = {}
    ok = True
    for name in backends[1:]:
        other = np.asarray(runs[name]["scores"], dtype=np.float64)
        diff = np.abs(other - ref)
        max_abs = float(diff.max()) if diff.size else 0.0
        scale = max(float(np.abs(ref).max()) if ref.size else 0.0, 1e-12)
        rel = max_abs / scale
        elem_rel = float(np.max(diff / np.maximum(np.abs(ref), 1e-12))) if diff.size else 0.0
        this_ok = bool(rel <= tolerance)
        ok &= this_ok
        parity[f"{name}_vs_{ref_name}"] = {
            "max_abs_diff": max_abs, "max_rel_diff": rel, "max_elementwise_rel_diff": elem_rel,
            "tolerance": tolerance, "ok": this_ok, "patches": int(ref.size),
        }
    epochs = []
    for e in range(len(runs[ref_name]["history"])):
        row = {"epoch": e}
        for name in backends:
            h = runs[name]["history"][e] if e < len(runs[name]["history"]) else {}
            for key in ("loss", "test_srcc", "test_plcc"):
                row[f"{name}_{key}"] = h.get(key)
        epochs.append(row)
    return {"parity": parity, "parity_ok": bool(ok), "epochs": epochs}


def _comparison_md(r: dict) -> str:
    c = r["config"]
    backends = c["backends"]
    lines = [
        "# Backend comparison",
        "",
        f"`{c['backbone']}`, patch {c['patch_size']}, batch {c['batch_size']}, {c['epochs']} epoch(s), "
        f"seed {c['seed']}, lr {c['lr']} (ratio {c['lr_ratio']}), {c['train_images']} train / "
        f"{c['test_images']} test images, {c['train_patches']}/{c['test_patches']} patches per image, "
        f"device {c['device']}; same initial weights (`init.weights.h5`) and patches for every backend.",
        "",
        "## Forward parity (inference scores, same weights and patches)",
        "",
        "| pair | patches | max abs diff | max rel diff | tolerance | ok |",
        "|---|---|---|---|---|---|",
    ]
    for pair, p in r["parity"].items():
        lines.append(f"| {pair} | {p['patches']} | {p['max_abs_diff']:.3g} | {p['max_rel_diff']:.3g} | "
                     f"{p['tolerance']:.2g} | {'yes' if p['ok'] else '**NO**'} |")
    lines += ["", "Relative difference: max |difference| / max |reference score|.", "",
              "## Training, per epoch", ""]
    head = ["epoch"] + [f"{b} {k}" for k in ("loss", "SRCC", "PLCC") for b in backends]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in r["epochs"]:
        cells = [str(row["epoch"])] + [
            _fmt(row.get(f"{b}_{k}"), ".5f") for k in ("loss", "test_srcc", "test_plcc") for b in backends]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Speed and memory", "",
              "| backend | median step (s) | first step (s) | patches/s | host peak RSS (MiB) | device peak (MiB) |",
              "|---|---|---|---|---|---|"]
    for b in backends:
        s = r["backends"][b]
        lines.append(f"| {b} | {_fmt(s['step_time_s'])} | {_fmt(s['first_step_s'])} | "
                     f"{_fmt(s['patches_per_s'], '.1f')} | {_fmt(s['peak_rss_mib'], '.0f')} | "
                     f"{_fmt(s.get('device_peak_mib'), '.0f')} |")
    lines += ["", "Median step excludes each run's first step (compilation / warm-up).",
              f"Verdict: parity {'OK' if r['parity_ok'] else 'BROKEN'}.", ""]
    return "\n".join(lines)


def _worker_compare_init(spec):
    import keras

    from keras_hyperiqa.data.pipeline import PatchDataset
    from keras_hyperiqa.model.hyperiqa import HyperIQA

    p = spec["patch_size"]
    keras.utils.set_random_seed(spec["seed"])
    model = HyperIQA(backbone=spec["backbone"], patch_size=p)
    model.build((None, p, p, 3))
    model.save_weights(spec["weights"])
    ds = PatchDataset(spec["train_items"] + spec["test_items"], patch_size=p, train=True,
                      patches_per_image=1, seed=spec["seed"] + 1, batch_size=spec["parity_patches"], workers=0)
    x, _ = next(iter(ds.train_batches(0)))
    np.savez(spec["patches"], x=x)
    return {"ok": True}


class _StepTimer:
    def __init__(self):
        self.times = []
        self._t = None

    def begin(self):
        self._t = time.perf_counter()

    def end(self):
        self.times.append(time.perf_counter() - self._t)


def _worker_compare_run(spec):
    import keras

    from keras_hyperiqa.data.pipeline import PatchDataset
    from keras_hyperiqa.model.hyperiqa import HyperIQA
    from keras_hyperiqa.training.optimizer import HyperAdam
    from keras_hyperiqa.training.schedule import Fixes, HyperIQASchedule
    from keras_hyperiqa.inference import Predictor
    from keras_hyperiqa.training.trainer import Trainer

    backend = keras.backend.backend()
    if spec.get("init"):
        _worker_compare_init(spec)
    p = spec["patch_size"]
    keras.utils.set_random_seed(spec["seed"])
    model = HyperIQA(backbone=spec["backbone"], patch_size=p)
    model.build((None, p, p, 3))
    model.load_weights(spec["weights"])
    patches = np.load(spec["patches"])["x"]
    scores = Predictor(model)(patches)

    timer = _StepTimer()

    class Timing(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            timer.begin()

        def on_train_batch_end(self, batch, logs=None):
            # Trainer.fit does not wait for its steps (the device runs them
            # while the host queues the next): reading the step counter,
            # written last, waits for this one.
            keras.ops.convert_to_numpy(optimizer.iterations)
            timer.end()

    optimizer = HyperAdam(learning_rate=spec["lr"], weight_decay=5e-4)
    trainer = Trainer(model, optimizer)
    schedule = HyperIQASchedule(optimizer, model.backbone_variables, model.hypernet_variables,
                                lr=spec["lr"], lr_ratio=spec["lr_ratio"], fixes=Fixes())
    # drop_last: every step has the same shape, so jax compiles the step once.
    train = PatchDataset(spec["train_items"], patch_size=p, train=True, patches_per_image=spec["train_patches"],
                         seed=spec["seed"], batch_size=spec["batch_size"], workers=0, drop_last=True)
    test = PatchDataset(spec["test_items"], patch_size=p, train=False, crops="random",
                        patches_per_image=spec["test_patches"], seed=spec["seed"],
                        batch_size=spec["batch_size"], workers=0)
    history = trainer.fit(train, spec["epochs"], test=test, callbacks=[schedule, Timing()], verbose=0)
    steady = timer.times[1:] or timer.times
    step = _median(steady)
    from keras_hyperiqa.numerics import reduction_length

    return {
        "backend": backend,
        "reduction_length": reduction_length(model),
        "scores": [float(s) for s in scores],
        "history": [{k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in h.items()}
                    for h in history],
        "steps": len(timer.times),
        "first_step_s": timer.times[0] if timer.times else None,
        "step_time_s": step,
        "patches_per_s": spec["batch_size"] / step if step and step > 0 else None,
        "peak_rss_mib": _peak_rss_mib(),
        "device_peak_mib": _device_peak_mib(backend),
    }


# --------------------------------------------------------------- worker entry

_WORKERS = {
    "compare-init": _worker_compare_init,
    "compare-run": _worker_compare_run,
}


def _worker_main(kind, spec_path):
    spec = json.loads(Path(spec_path).read_text())
    import keras_hyperiqa  # noqa: F401  (backend default, class registration)
    result = _WORKERS[kind](spec)
    Path(spec["result"]).write_text(json.dumps(result, default=_json_default))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        _worker_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m keras_hyperiqa.compare --worker KIND SPEC.json")
