"""Benchmarks: Keras-torch vs Keras-jax vs plain PyTorch, and the data pipeline.

:func:`run_bench` (behind ``scripts/bench.py``) measures training throughput
(patches/s), inference throughput (images/s at 25 patches each) and peak
memory for Keras-torch, Keras-jax and the plain-PyTorch baseline
(:mod:`benchmarks.baseline`), one long-lived subprocess per implementation and
task whose repetitions are interleaved round by round, plus the data pipeline
against decode-per-patch (also behind ``scripts/bench_pipeline.py``). Writes
``bench.md`` and ``bench.json``.

Every figure is the median of ``reps`` timed repetitions after ``warmup``
untimed ones; the ratios to plain PyTorch are medians of per-round ratios.
Peak memory: the subprocess's ``ru_maxrss`` (host), and on a GPU
``torch.cuda.max_memory_allocated`` or jax's ``peak_bytes_in_use``. The
worker protocol and helpers are shared with :mod:`keras_hyperiqa.compare`.

This module imports neither keras nor torch at import time: the parent
process only spawns workers (``python -m benchmarks.bench --serve KIND
SPEC``, with the repository root on ``PYTHONPATH``), so it can run from a
process already committed to either backend.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from keras_hyperiqa.compare import (
    _current_rss_mib,
    _device_peak_mib,
    _env,
    _fmt,
    _median,
    _peak_rss_mib,
    _versions,
    _write,
)

ROOT = Path(__file__).resolve().parents[1]

IMPLEMENTATIONS = ("keras-torch", "keras-jax", "torch")
TARGETS = {  # time ratios to the plain-PyTorch baseline (lower is better)
    "keras-torch": {"train": 1.10, "infer": 1.05},
    "keras-jax": {"train": 1.50, "infer": 1.05},
}
MEMORY_TARGETS = {  # peak-memory ratios to the plain-PyTorch baseline
    "keras-torch": {"infer": 1.5},
}
PIPELINE_TARGET = 5.0


def _worker_env(backend, device):
    """The workers' environment: ``_env`` plus the repository root on ``PYTHONPATH``."""
    env = _env(backend, device)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_bench(out_dir, backbone: str = "resnet50", batch_size: int | None = None, reps: int = 5,
              warmup: int | None = None, device: str = "cpu", precision: str | None = None,
              infer_images: int | None = None, patches_per_image: int = 25, patch_size: int = 224,
              pipeline_images: int = 32, steps_per_rep: int | None = None,
              implementations=IMPLEMENTATIONS, seed: int = 0, timeout: float = 1800,
              isolate: bool = True, verbose: bool = False, stall_images: int = 6) -> dict:
    """Training / inference throughput and peak memory per implementation, plus the data pipeline.

    Defaults per ``device``: CPU batch 4, fp32, 1 warm-up, 1 image (25
    patches) per inference batch; GPU batch 64, bf16, 3 warm-ups, 8 images
    per inference batch, 5 steps per repetition. The Keras training workers
    then time their input stall: one ``Trainer.fit`` epoch over
    ``stall_images`` JPEGs (:func:`_input_stall`). Each (implementation, task)
    runs in its own long-lived subprocess; the training subprocesses of all
    implementations run side by side (idle but one at a time), their
    repetitions interleaved round by round, then likewise the inference ones
    (with ``isolate=False`` one subprocess per implementation runs both
    tasks: quicker, but the inference peak memory then includes training's).
    Returns the dict written to ``bench.json``.
    """
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be cpu or gpu, got {device!r}")
    gpu = device == "gpu"
    batch_size = int(batch_size or (64 if gpu else 4))
    warmup = int(warmup if warmup is not None else (3 if gpu else 1))
    precision = precision or ("bf16" if gpu else "fp32")
    infer_images = int(infer_images or (8 if gpu else 1))
    steps_per_rep = int(steps_per_rep or (5 if gpu else 1))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(backbone=backbone, batch_size=batch_size, reps=int(reps), warmup=warmup, device=device,
                  precision=precision, infer_images=infer_images, patches_per_image=int(patches_per_image),
                  patch_size=int(patch_size), steps_per_rep=steps_per_rep, pipeline_images=int(pipeline_images),
                  implementations=list(implementations), seed=int(seed), isolate=bool(isolate),
                  stall_images=int(stall_images))
    t0 = time.perf_counter()
    results = {impl: {} for impl in implementations}
    for tasks in ((["train"], ["infer"]) if isolate else (["train", "infer"],)):
        if verbose:
            print(f"bench: {'+'.join(tasks)}: {', '.join(implementations)}, {reps} interleaved "
                  f"rounds ...", file=sys.stderr, flush=True)
        specs = {}
        for impl in implementations:
            backend = {"keras-torch": "torch", "keras-jax": "jax"}.get(impl)
            kind = "bench-keras" if backend else "bench-torch"
            specs[impl] = (kind, backend, dict(config, impl=f"{impl}-{'-'.join(tasks)}", tasks=tasks))
        for impl, res in _bench_round_robin(specs, out, device, timeout, int(reps)).items():
            results[impl].update(res)
    if verbose:
        print("bench: data pipeline ...", file=sys.stderr, flush=True)
    pipeline = pipeline_throughput(pipeline_images, patches_per_image, reps=max(5, int(reps)),
                                   patch_size=patch_size)
    result = {"config": config, "versions": _versions(), "results": results, "pipeline": pipeline}
    result["ratios"] = _bench_ratios(results)
    result["wall_s"] = time.perf_counter() - t0
    _write(out, "bench", result, _bench_md(result))
    return result


def _bench_ratios(results: dict) -> dict:
    base = results.get("torch")
    ratios = {}
    if not base:
        return ratios
    for impl, r in results.items():
        if impl == "torch":
            continue
        row = {}
        for task, key in (("train", "patches_per_s"), ("infer", "images_per_s")):
            ours, ref = r[task].get(key), base[task].get(key)
            if ours and ref:
                # Rounds are interleaved: compare each round with the baseline's
                # same round, then take the median (robust to the machine's drift).
                paired = [t / b for t, b in zip(r[task].get("times_s", []), base[task].get("times_s", []))]
                ratio = _median(paired) if paired else ref / ours
                row[f"{task}_time_ratio"] = ratio  # > 1: slower than plain PyTorch
                row[f"{task}_throughput_ratio"] = 1.0 / ratio
                row[f"{task}_time_ratio_of_medians"] = ref / ours
                target = TARGETS.get(impl, {}).get(task)
                if target is not None:
                    row[f"{task}_target"] = target
                    row[f"{task}_target_met"] = bool(ratio <= target)
            for key, name in (("peak_rss_mib", "peak_rss_ratio"), ("device_peak_mib", "device_peak_ratio"),
                              ("setup_rss_mib", "setup_rss_ratio")):
                ref_mem, our_mem = base[task].get(key), r[task].get(key)
                if ref_mem and our_mem:
                    row[f"{task}_{name}"] = our_mem / ref_mem
            target = MEMORY_TARGETS.get(impl, {}).get(task)
            if target is not None and f"{task}_peak_rss_ratio" in row:
                memory = row.get(f"{task}_device_peak_ratio", row[f"{task}_peak_rss_ratio"])
                row[f"{task}_memory_target"] = target
                row[f"{task}_memory_target_met"] = bool(memory <= target)
        ratios[impl] = row
    return ratios


def _bench_md(r: dict) -> str:
    c = r["config"]
    lines = [
        "# Benchmark",
        "",
        f"`{c['backbone']}`, patch {c['patch_size']}, device {c['device']}, {c['precision']}, train batch "
        f"{c['batch_size']} ({c['steps_per_rep']} step(s) per repetition), inference {c['infer_images']} "
        f"image(s) x {c['patches_per_image']} patches per batch; median of {c['reps']} repetitions after "
        f"{c['warmup']} warm-up(s); one subprocess per implementation and task, their repetitions "
        f"interleaved round by round. "
        f"Load average at the end: {r['versions'].get('loadavg')}, {r['versions'].get('cpus')} CPUs.",
        "",
        "| implementation | train patches/s | train step (s) | train time ratio | infer images/s | "
        "infer time ratio | train peak RSS (MiB) | infer peak RSS (MiB) | RSS after set-up train/infer (MiB) | "
        "device peak train/infer (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for impl, res in r["results"].items():
        ratio = r["ratios"].get(impl, {})
        tr, inf = res["train"], res["infer"]

        def with_target(task):
            v = ratio.get(f"{task}_time_ratio")
            if v is None:
                return "1 (baseline)" if impl == "torch" else "-"
            t = ratio.get(f"{task}_target")
            return f"{v:.3f}" + ("" if t is None else f" (target <= {t}: {'met' if ratio[f'{task}_target_met'] else 'NOT met'})")

        def memory(task, key, name):
            """The figure and, beside it, its ratio to plain PyTorch's."""
            text = _fmt(res[task].get(key), ".0f")
            v = ratio.get(f"{task}_{name}")
            if v is not None:
                text += f" ({v:.2f}x)"
                t = ratio.get(f"{task}_memory_target")
                if t is not None and name == ("device_peak_ratio" if f"{task}_device_peak_ratio" in ratio
                                              else "peak_rss_ratio"):
                    text += f" (target <= {t}: {'met' if ratio[f'{task}_memory_target_met'] else 'NOT met'})"
            return text

        lines.append(
            f"| {impl} | {_fmt(tr['patches_per_s'], '.2f')} | {_fmt(tr['step_time_s'], '.3f')} | {with_target('train')} | "
            f"{_fmt(inf['images_per_s'], '.3f')} | {with_target('infer')} | "
            f"{memory('train', 'peak_rss_mib', 'peak_rss_ratio')} | {memory('infer', 'peak_rss_mib', 'peak_rss_ratio')} | "
            f"{memory('train', 'setup_rss_mib', 'setup_rss_ratio')} / {memory('infer', 'setup_rss_mib', 'setup_rss_ratio')} | "
            f"{memory('train', 'device_peak_mib', 'device_peak_ratio')} / "
            f"{memory('infer', 'device_peak_mib', 'device_peak_ratio')} |")
    stalls = [(impl, res["train"]["input_stall"]) for impl, res in r["results"].items()
              if res["train"].get("input_stall")]
    if stalls:
        n = stalls[0][1]["steps"]
        lines += ["", f"Input stall (the time a `Trainer.fit` step waits for its batch; one epoch of {n} "
                  f"steps over {n} JPEGs 512x384, {c['batch_size']} random crops each, prepared by the "
                  "prefetch thread during the previous step; median of steps 2.., the first step "
                  "waits for the pipeline's start): " + ", ".join(
                      f"{impl} {1e3 * s['stall_s']:.2f} ms per step (max {1e3 * s['max_stall_s']:.2f} ms, "
                      f"{100 * s['stall_s'] / s['fit_step_s']:.1f}% of the {s['fit_step_s']:.3f} s step; "
                      f"first step {1e3 * s['first_wait_s']:.0f} ms)" for impl, s in stalls) + "."]
    p = r["pipeline"]
    lines += ["", "Time ratio: the median over rounds of this implementation's time / plain PyTorch's "
              "time in the same round (1.10 = 10% slower). Memory: the figure, then its ratio to plain "
              "PyTorch's in parentheses; RSS after set-up is the process's resident memory once libraries, "
              "model and optimizer are loaded, before any step (the Keras workers block TensorFlow, which "
              "keras-hub would import, as the command line does). "
              "Compile / first-step times: " + ", ".join(
                  f"{impl} {_fmt(res['train'].get('first_step_s'), '.2f')} s"
                  for impl, res in r["results"].items()) + ".",
              "", "## Data pipeline", "",
              f"{p['images']} JPEGs 512x384, {p['patches_per_image']} random {p['patch_size']} crops per image, "
              f"batch {p['batch_size']}, float32 batches, {p['workers']} worker thread(s); median of {p['reps']}.",
              "", "| method | patches/s |", "|---|---|",
              f"| decode-per-patch, 1 thread (the original) | {p['decode_per_patch_patches_per_s']:.1f} |",
              f"| PatchDataset float32 | {p['pipeline_patches_per_s']:.1f} |",
              f"| PatchDataset uint8 | {p['pipeline_uint8_patches_per_s']:.1f} |",
              "", f"Speed-up over decode-per-patch: {p['speedup']:.2f}x (target >= {PIPELINE_TARGET}x: "
              f"{'met' if p['speedup'] >= PIPELINE_TARGET else 'NOT met'}).", ""]
    return "\n".join(lines)


def _keras_model(spec):
    import keras

    if spec["precision"] == "bf16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    from keras_hyperiqa.model.hyperiqa import HyperIQA

    keras.utils.set_random_seed(spec["seed"])
    p = spec["patch_size"]
    model = HyperIQA(backbone=spec["backbone"], patch_size=p)
    model.build((None, p, p, 3))
    return model


def _inputs(spec, n):
    rng = np.random.default_rng(spec["seed"])
    p = spec["patch_size"]
    x = rng.uniform(0, 255, size=(n, p, p, 3)).astype(np.float32)
    y = rng.uniform(0, 100, size=(n,)).astype(np.float32)
    return x, y


def _setup_bench_keras(spec):
    """``{task: (run, items)}`` for Keras on this process's backend."""
    model = _keras_model(spec)
    tasks = {}
    for task in spec["tasks"]:
        if task == "train":
            from keras_hyperiqa.training.optimizer import HyperAdam
            from keras_hyperiqa.training.trainer import Trainer

            optimizer = HyperAdam(learning_rate=2e-5, weight_decay=5e-4)
            trainer = Trainer(model, optimizer)
            optimizer.set_group_multiplier(model.hypernet_variables, 10.0)
            x, y = _inputs(spec, spec["batch_size"])

            def run(trainer=trainer, x=x, y=y):
                for _ in range(spec["steps_per_rep"]):
                    trainer.train_step(x, y)  # returns a float: waits for the step
            run.input_stall = lambda trainer=trainer: _input_stall(trainer, spec)
            tasks[task] = (run, spec["batch_size"] * spec["steps_per_rep"])
        else:
            from keras_hyperiqa.inference import Predictor

            predict = Predictor(model)
            x, _ = _inputs(spec, spec["infer_images"] * spec["patches_per_image"])

            def run(predict=predict, x=x):
                predict(x)  # numpy scores: waits for the forward
            tasks[task] = (run, spec["infer_images"])
    return tasks


def _input_stall(trainer, spec):
    """How long a ``Trainer.fit`` step waits for its batch.

    One epoch over ``stall_images`` 512x384 JPEGs with ``batch_size`` random
    crops each (one step per image's worth of patches), read by
    ``PatchDataset`` while the prefetch thread prepares the next batches
    during each step. The first step's wait (the pipeline's start: nothing
    decoded yet) is reported apart.
    """
    from keras_hyperiqa.data.pipeline import PatchDataset

    n = int(spec.get("stall_images") or 6)
    with tempfile.TemporaryDirectory() as folder:
        paths = make_jpegs(Path(folder), n, seed=spec["seed"])
        ds = PatchDataset([(p, float(i)) for i, p in enumerate(paths)], patch_size=spec["patch_size"],
                          patches_per_image=spec["batch_size"], batch_size=spec["batch_size"],
                          seed=spec["seed"])
        t = time.perf_counter()
        trainer.fit(ds, 1, verbose=0)
        wall = time.perf_counter() - t
    waits = list(trainer.batch_waits)
    return {"steps": len(waits), "first_wait_s": waits[0], "stall_s": _median(waits[1:]),
            "max_stall_s": max(waits[1:], default=math.nan), "fit_step_s": wall / len(waits)}


def _setup_bench_torch(spec):
    """``{task: (run, items)}`` for the plain-PyTorch baseline."""
    import torch

    from benchmarks.baseline import TorchHyperIQA, make_optimizer

    torch.manual_seed(spec["seed"])
    dev = torch.device("cuda" if spec["device"] == "gpu" else "cpu")
    model = TorchHyperIQA(spec["backbone"], patch_size=spec["patch_size"]).to(dev)
    bf16 = spec["precision"] == "bf16"

    def forward(xt):
        if bf16:
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
                return model(xt)
        return model(xt)

    def to_device(a):  # NHWC numpy from the data pipeline -> NCHW on the device
        return torch.from_numpy(a).to(dev, non_blocking=True).permute(0, 3, 1, 2)

    tasks = {}
    for task in spec["tasks"]:
        if task == "train":
            optimizer = make_optimizer(model, lr=2e-5, lr_ratio=10.0, weight_decay=5e-4)
            x, y = _inputs(spec, spec["batch_size"])

            def step(optimizer=optimizer, x=x, y=y):
                model.train()
                xt, yt = to_device(x), torch.from_numpy(y).to(dev)
                optimizer.zero_grad(set_to_none=True)
                loss = (forward(xt).float() - yt).abs().mean()
                loss.backward()
                optimizer.step()
                return loss.item()  # what a training loop logs; waits for the step

            def run(step=step):
                for _ in range(spec["steps_per_rep"]):
                    step()
            tasks[task] = (run, spec["batch_size"] * spec["steps_per_rep"])
        else:
            x, _ = _inputs(spec, spec["infer_images"] * spec["patches_per_image"])

            def run(x=x):
                model.eval()
                with torch.inference_mode():
                    forward(to_device(x)).float().cpu().numpy()
            tasks[task] = (run, spec["infer_images"])
    return tasks


def _serve_bench(kind, spec_path):
    """A benchmark worker driven over stdin/stdout, so that the parent can
    interleave the implementations' repetitions.

    Sets up every task of the spec, runs its warm-ups (the first one timed as
    the compile / first-step time), answers ``ready``, then for each
    ``rep TASK`` line runs one timed repetition and answers its seconds; on
    ``done`` answers the peak memory and exits. One JSON object per line on
    the original stdout; everything else the libraries print goes to stderr.
    """
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    spec = json.loads(Path(spec_path).read_text())
    import keras_hyperiqa  # noqa: F401  (backend default, class registration)

    if kind != "bench-torch":
        # As the command line runs: keras-hub would import TensorFlow, which
        # HyperIQA never uses (hundreds of MiB resident).
        from keras_hyperiqa.backend import block_unused_frameworks

        block_unused_frameworks(os.environ.get("KERAS_BACKEND"))
    backend = "torch" if kind == "bench-torch" else None
    tasks = (_setup_bench_torch if kind == "bench-torch" else _setup_bench_keras)(spec)
    setup_rss = _current_rss_mib()  # libraries, model, optimizer: before any step
    if backend is None:
        import keras

        backend = keras.backend.backend()
    first = {}
    for task, (run, _) in tasks.items():
        for i in range(max(1, spec["warmup"])):
            t = time.perf_counter()
            run()
            if i == 0:
                first[task] = time.perf_counter() - t
    proto.write(json.dumps({"ready": True, "first_step_s": first, "setup_rss_mib": setup_rss,
                            "items": {task: n for task, (_, n) in tasks.items()}}) + "\n")
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["rep"]:
            run = tasks[words[1]][0]
            t = time.perf_counter()
            run()
            proto.write(json.dumps({"time_s": time.perf_counter() - t}) + "\n")
        elif words[:1] == ["done"]:
            break
    final = {"peak_rss_mib": _peak_rss_mib(), "device_peak_mib": _device_peak_mib(backend)}
    train = tasks.get("train", (None,))[0]
    if hasattr(train, "input_stall"):  # after the peaks: the JPEG epoch is not counted there
        final["input_stall"] = train.input_stall()
    proto.write(json.dumps(final) + "\n")
    proto.close()


class _BenchWorker:
    """Parent side of :func:`_serve_bench`: one long-lived subprocess."""

    def __init__(self, kind, spec, out_dir, backend, device, timeout):
        self.name = spec["impl"]
        self.timeout = timeout
        spec_path = out_dir / f".{kind}-{self.name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        self.spec_path = spec_path
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench", "--serve", kind, str(spec_path)],
            env=_worker_env(backend, device), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.log, text=True, bufsize=1)
        self.ready = self._read()

    def _read(self):
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            if not ready:  # timed out: stop it
                self.proc.kill()
            self.close(keep_log=True)  # waits: the exit status is known after
            self.log.seek(0)
            stderr = self.log.read()[-4000:]
            self.log.close()
            raise RuntimeError(f"{self.name} worker failed or timed out "
                               f"(exit {self.proc.returncode}):\n{stderr}")
        return json.loads(line)

    def rep(self, task):
        self.proc.stdin.write(f"rep {task}\n")
        self.proc.stdin.flush()
        return self._read()["time_s"]

    def finish(self):
        self.proc.stdin.write("done\n")
        self.proc.stdin.flush()
        final = self._read()
        self.close()
        return final

    def close(self, kill=False, keep_log=False):
        if kill and self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not keep_log:
            self.log.close()
        self.spec_path.unlink(missing_ok=True)


def _bench_round_robin(specs, out_dir, device, timeout, reps):
    """Time ``reps`` repetitions of every (implementation, task), interleaved.

    ``specs``: ``{impl: (kind, backend, spec)}``. The workers start one after
    the other (each set-up and warm-up runs alone), then every round runs one
    repetition of each implementation, the order rotating per round, so that
    drifts of the machine's speed hit all implementations alike. Returns
    ``{impl: {task: result}}``; each result keeps its per-round ``times_s``.
    """
    workers = {}
    try:
        for impl, (kind, backend, spec) in specs.items():
            workers[impl] = _BenchWorker(kind, spec, out_dir, backend, device, timeout)
        impls = list(specs)
        times = {impl: {task: [] for task in specs[impl][2]["tasks"]} for impl in impls}
        for r in range(reps):
            for impl in impls[r % len(impls):] + impls[:r % len(impls)]:
                for task in times[impl]:
                    times[impl][task].append(workers[impl].rep(task))
        results = {}
        for impl in impls:
            worker = workers.pop(impl)
            final = worker.finish()  # peak memory of this process (its tasks only)
            spec = specs[impl][2]
            results[impl] = {}
            for task, ts in times[impl].items():
                med = _median(ts)
                n = worker.ready["items"][task]
                out = {"impl": spec["impl"], "task": task, "times_s": ts,
                       "first_step_s": worker.ready["first_step_s"][task],
                       "peak_rss_mib": final["peak_rss_mib"],
                       "setup_rss_mib": worker.ready.get("setup_rss_mib"),
                       "device_peak_mib": final["device_peak_mib"]}
                if task == "train":
                    out["step_time_s"] = med / spec["steps_per_rep"]
                    out["patches_per_s"] = n / med
                    if final.get("input_stall"):
                        out["input_stall"] = final["input_stall"]
                else:
                    out["batch_time_s"] = med
                    out["images_per_s"] = n / med
                results[impl][task] = out
        return results
    finally:
        for worker in workers.values():
            worker.close(kill=True)


# --------------------------------------------------------------- data pipeline

def make_jpegs(folder: Path, n: int, seed: int = 0):
    """``n`` 512x384 JPEGs (smooth colour fields plus noise) for pipeline benchmarks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        small = rng.random((12, 16, 3)).astype(np.float32) * 255
        base = np.asarray(Image.fromarray(small.astype(np.uint8)).resize((512, 384), Image.BICUBIC), np.float32)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        p = folder / f"img{i:03d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        paths.append(str(p))
    return paths


def decode_per_patch_epoch(paths, labels, patches, patch, batch, seed=0, workers=1):
    """The original's data loading: every patch decodes its whole file again.

    One sample per (image, patch), shuffled; each opens, decodes, maybe flips
    and crops its image; batches are stacked. ``workers`` > 1 decodes with a
    thread pool. Returns the number of patches produced.
    """
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    rng = np.random.default_rng(seed)
    samples = [(p, y) for p, y in zip(paths, labels) for _ in range(patches)]
    order = rng.permutation(len(samples))
    seeds = rng.integers(0, 2**63 - 1, size=len(samples))

    def one(k):
        path, _ = samples[order[k]]
        r = np.random.default_rng(seeds[k])
        with open(path, "rb") as fh:
            img = Image.open(fh).convert("RGB")
        if r.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        w, h = img.size
        t, l = int(r.integers(0, h - patch + 1)), int(r.integers(0, w - patch + 1))
        return np.asarray(img.crop((l, t, l + patch, t + patch)), dtype=np.float32)

    n = 0
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for start in range(0, len(samples), batch):
            ks = range(start, min(len(samples), start + batch))
            n += len(np.stack(list(pool.map(one, ks)) if pool else [one(k) for k in ks]))
    finally:
        if pool:
            pool.shutdown()
    return n


def pipeline_throughput(images: int = 32, patches_per_image: int = 25, reps: int = 5, patch_size: int = 224,
                        batch_size: int = 96, workers: int | None = None) -> dict:
    """Patches/s of ``PatchDataset`` vs decode-per-patch on generated 512x384 JPEGs (median of reps)."""
    from keras_hyperiqa.data.pipeline import PatchDataset

    workers = min(8, os.cpu_count() or 1) if workers is None else int(workers)
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        paths = make_jpegs(Path(tmp), images)
        labels = [float(i) for i in range(len(paths))]
        items = list(zip(paths, labels))

        def pipeline(dtype):
            ds = PatchDataset(items, patch_size=patch_size, patches_per_image=patches_per_image,
                              batch_size=batch_size, workers=workers, dtype=dtype)
            return sum(len(x) for x, _ in ds.train_batches(0))

        def timed(fn, *args):
            fn(*args)  # warm-up: page cache, imports, thread pool
            ts, n = [], 0
            for _ in range(reps):
                t = time.perf_counter()
                n = fn(*args)
                ts.append(time.perf_counter() - t)
            return n / _median(ts)

        base = timed(decode_per_patch_epoch, paths, labels, patches_per_image, patch_size, batch_size)
        ours = timed(pipeline, "float32")
        ours_u8 = timed(pipeline, "uint8")
    return {"images": images, "patches_per_image": patches_per_image, "patch_size": patch_size,
            "batch_size": batch_size, "workers": workers, "reps": reps,
            "decode_per_patch_patches_per_s": base, "pipeline_patches_per_s": ours,
            "pipeline_uint8_patches_per_s": ours_u8, "speedup": ours / base,
            "speedup_uint8": ours_u8 / base}


# --------------------------------------------------------------- worker entry

if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve":
        _serve_bench(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m benchmarks.bench --serve KIND SPEC.json")
