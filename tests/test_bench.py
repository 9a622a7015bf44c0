"""Smoke tests of the backend comparison and the benchmark on a tiny configuration.

Only the report files and their fields are checked (and forward parity,
which is a correctness property); timings are never asserted.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run_script(script, args, timeout=600):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("KERAS_BACKEND", None)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_compare_backends_script_tiny(tmp_path):
    out = tmp_path / "cmp"
    proc = _run_script("compare_backends.py", [
        "--out", str(out), "--backbone", "resnet_tiny", "--patch-size", "64", "--image-size", "72",
        "--scenes", "2", "--batch-size", "8", "--train-patches", "1", "--parity-patches", "8"])
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / "comparison.json").read_text())
    md = (out / "comparison.md").read_text()
    assert result["parity_ok"] is True
    parity = result["parity"]["jax_vs_torch"]
    assert parity["ok"] and parity["patches"] == 8
    from keras_hyperiqa.numerics import forward_tolerance

    # The default tolerance: float32 error growth over the model's reduction length.
    n = result["backends"]["torch"]["reduction_length"]
    assert n == result["backends"]["jax"]["reduction_length"] > 1000
    assert parity["tolerance"] == result["config"]["tolerance"] == forward_tolerance(n)
    assert parity["max_rel_diff"] <= parity["tolerance"] and parity["max_abs_diff"] >= 0
    assert result["config"]["backbone"] == "resnet_tiny"
    assert set(result["backends"]) == {"torch", "jax"}
    for backend in ("torch", "jax"):
        run = result["backends"][backend]
        assert run["backend"] == backend
        assert len(run["scores"]) == 8 and run["steps"] >= 1
        for key in ("step_time_s", "first_step_s", "patches_per_s", "peak_rss_mib"):
            assert run[key] > 0
        assert [h["epoch"] for h in run["history"]] == [0]
    row = result["epochs"][0]
    for key in ("torch_loss", "jax_loss", "torch_test_srcc", "jax_test_srcc", "torch_test_plcc", "jax_test_plcc"):
        assert key in row
    assert abs(row["torch_loss"] - row["jax_loss"]) <= 1e-3 * abs(row["torch_loss"])
    assert (out / "init.weights.h5").exists() and (out / "parity_patches.npz").exists()
    for text in ("Forward parity", "jax_vs_torch", "Training, per epoch", "Speed and memory", "parity OK"):
        assert text in md
    assert "Forward parity" in proc.stdout


def test_compare_backends_reports_broken_parity(tmp_path):
    from keras_hyperiqa.compare import _compare_results

    runs = {"torch": {"scores": [1.0, 2.0], "history": [{"loss": 1.0}]},
            "jax": {"scores": [1.0, 2.1], "history": [{"loss": 1.1}]}}
    r = _compare_results(runs, ["torch", "jax"], 1e-5)
    assert r["parity_ok"] is False
    assert abs(r["parity"]["jax_vs_torch"]["max_rel_diff"] - 0.05) < 1e-9
    assert r["epochs"][0]["jax_loss"] == 1.1


def test_bench_script_tiny(tmp_path):
    from benchmarks.bench import run_bench

    out = tmp_path / "bench"
    # One subprocess per implementation (isolate=False) keeps the smoke test short;
    # the script's default isolates every figure.
    result = run_bench(out, backbone="resnet_tiny", batch_size=2, reps=1, warmup=0, patch_size=64,
                       patches_per_image=4, infer_images=1, pipeline_images=2, isolate=False,
                       stall_images=2)
    data = json.loads((out / "bench.json").read_text())
    assert data["config"] == result["config"]
    assert data["config"]["device"] == "cpu" and data["config"]["precision"] == "fp32"
    assert set(data["results"]) == {"keras-torch", "keras-jax", "torch"}
    for impl, res in data["results"].items():
        assert res["train"]["patches_per_s"] > 0 and res["train"]["step_time_s"] > 0
        assert res["infer"]["images_per_s"] > 0
        assert res["train"]["peak_rss_mib"] > 0 and len(res["train"]["times_s"]) == 1
        assert res["train"]["first_step_s"] > 0
    for impl in ("keras-torch", "keras-jax"):
        ratios = data["ratios"][impl]
        for key in ("train_time_ratio", "infer_time_ratio", "train_throughput_ratio", "train_peak_rss_ratio"):
            assert ratios[key] > 0
        assert isinstance(ratios["train_target_met"], bool)
    assert "infer_target_met" in data["ratios"]["keras-torch"]
    p = data["pipeline"]
    for key in ("decode_per_patch_patches_per_s", "pipeline_patches_per_s", "pipeline_uint8_patches_per_s",
                "speedup"):
        assert p[key] > 0
    for impl in ("keras-torch", "keras-jax"):  # Trainer.fit over JPEGs: its batch waits
        stall = data["results"][impl]["train"]["input_stall"]
        assert stall["steps"] == 2 and 0 <= stall["stall_s"] <= stall["max_stall_s"]
        assert stall["first_wait_s"] > 0 and stall["fit_step_s"] > 0
    assert "input_stall" not in data["results"]["torch"]["train"]
    md = (out / "bench.md").read_text()
    for text in ("keras-torch", "keras-jax", "| torch |", "Data pipeline", "time ratio",
                 "Input stall", "ms per step"):
        assert text in md


def test_bench_ratios_pair_rounds():
    """Interleaved rounds: the ratio is the median of per-round ratios, so a
    round where the whole machine was slow does not count against one side."""
    from benchmarks.bench import _bench_ratios

    def res(times, n=4):
        t = sorted(times)[len(times) // 2]
        return {"train": {"times_s": times, "patches_per_s": n / t, "peak_rss_mib": 1.0},
                "infer": {"times_s": times, "images_per_s": 1 / t, "peak_rss_mib": 1.0}}

    # the machine slows 2x in round 1 and 3x in round 2, for both alike
    results = {"keras-torch": res([1.05, 2.1, 3.15]), "torch": res([1.0, 2.0, 3.0])}
    ratios = _bench_ratios(results)["keras-torch"]
    assert abs(ratios["train_time_ratio"] - 1.05) < 1e-9
    assert abs(ratios["train_time_ratio_of_medians"] - 1.05) < 1e-9
    assert ratios["train_target_met"] is True and ratios["infer_target_met"] is True
    # a drift that only one side saw (not interleaved) shows in the ratio of medians only
    results = {"keras-torch": res([1.05, 1.04, 1.06]), "torch": res([1.0, 0.5, 0.5])}
    ratios = _bench_ratios(results)["keras-torch"]
    assert abs(ratios["train_time_ratio"] - 2.08) < 1e-9
    assert ratios["train_target_met"] is False


def test_bench_script_help():
    proc = _run_script("bench.py", ["--help"], timeout=120)
    assert proc.returncode == 0 and "--device" in proc.stdout and "--backbone" in proc.stdout


def test_bench_table_shows_memory_ratios_to_plain_pytorch():
    from benchmarks.bench import _bench_md, _bench_ratios

    def res(peak, setup, times=(1.0,)):
        return {"train": {"times_s": list(times), "patches_per_s": 4.0, "step_time_s": 1.0, "peak_rss_mib": peak,
                          "setup_rss_mib": setup, "first_step_s": 2.0},
                "infer": {"times_s": list(times), "images_per_s": 1.0, "batch_time_s": 1.0, "peak_rss_mib": peak,
                          "setup_rss_mib": setup}}

    results = {"keras-torch": res(3000.0, 1700.0), "torch": res(1200.0, 850.0)}
    ratios = _bench_ratios(results)
    kt = ratios["keras-torch"]
    assert abs(kt["infer_peak_rss_ratio"] - 2.5) < 1e-9 and abs(kt["train_setup_rss_ratio"] - 2.0) < 1e-9
    assert kt["infer_memory_target"] == 1.5 and kt["infer_memory_target_met"] is False
    config = dict(backbone="resnet50", patch_size=224, device="cpu", precision="fp32", batch_size=4,
                  steps_per_rep=1, infer_images=1, patches_per_image=25, reps=1, warmup=1)
    pipeline = dict(images=1, patches_per_image=1, patch_size=224, batch_size=1, workers=1, reps=1,
                    decode_per_patch_patches_per_s=1.0, pipeline_patches_per_s=6.0,
                    pipeline_uint8_patches_per_s=7.0, speedup=6.0)
    md = _bench_md({"config": config, "versions": {"loadavg": [1, 1, 1], "cpus": 2}, "results": results,
                    "ratios": ratios, "pipeline": pipeline})
    row = next(line for line in md.splitlines() if line.startswith("| keras-torch"))
    assert "3000 (2.50x) (target <= 1.5: NOT met)" in row and "1700 (2.00x)" in row
    assert "| torch |" in md and "1200 |" in next(line for line in md.splitlines() if line.startswith("| torch"))


def test_gpu_check_script_parses():
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["bash", str(script), "--bogus"], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
