"""The Swin fork's model (SMART-IQA, issue 16): its checkpoints converted, scored
against a torch.nn restatement of the fork (``reference_smart_iqa.py``) on torch
and jax, its dropout / stochastic depth, optimizer groups and ``fit`` options.

Parity runs on ``swin_micro`` (swin_tiny's layout at a sixth of the width) for
speed; ``test_swin_tiny_checkpoint_parity`` (slow) does the real size.
"""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import keras_hyperiqa  # noqa: E402,F401  (sets KERAS_BACKEND=torch if unset)
import keras  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import reference_smart_iqa as ref  # noqa: E402
from conftest import noisy_ramps, run_backend, write_csv_dataset  # noqa: E402
from keras_hyperiqa.cli import cli  # noqa: E402
from keras_hyperiqa.convert.original import convert_original_checkpoint as convert_checkpoint  # noqa: E402
from keras_hyperiqa.convert.smart_iqa import detect_architecture  # noqa: E402
from keras_hyperiqa.errors import UserError  # noqa: E402
from keras_hyperiqa.model.hyperiqa import HyperIQA  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:Layer 'attn' \\(of type WindowAttention\\):UserWarning")

# Scores of converted models vs the fork's forward, relative to the spread of
# the fork's scores over the test patches (a float32 forward in another order
# differs by ~1e-6 of it; a dropped attention weight or a mis-ported key moves
# the scores by more than 1e-2 of it).
SPREAD_TOL = 1e-4


def _np(t):
    if isinstance(t, keras.Variable):
        t = t.value
    return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)


def _fork(attention, size="tiny", overrides=ref.MICRO, seed=0):
    torch.manual_seed(seed)
    return ref.randomise(ref.HyperNet(size, True, attention, swin_overrides=overrides), seed).eval()


@pytest.fixture(scope="module")
def x():
    return ref.test_patches(4)


@pytest.fixture(scope="module")
def cases(x, tmp_path_factory):
    """Per fusion kind: the fork's scores and attention weights, its checkpoint, the converted file."""
    d = tmp_path_factory.mktemp("smart")
    out = {}
    for kind, attention in (("attention", True), ("concat", False)):
        net = _fork(attention)
        with torch.no_grad():
            scores, weights = net(x, return_attention=True)
        src, dst = d / f"{kind}.pkl", d / f"{kind}.keras"
        torch.save(net.fork_state_dict(), src)
        model = convert_checkpoint(src, dst, resize=None)
        out[kind] = dict(net=net, scores=scores.numpy(), src=src, dst=dst, model=model,
                         weights=None if weights is None else weights.numpy())
    np.save(d / "x.npy", x)
    return out


def _check_scores(ours, theirs, what):
    spread = float(np.ptp(theirs))
    err = float(np.abs(np.asarray(ours) - theirs).max())
    print(f"\n{what}: max |ours - fork| {err:.2e} = {err / spread:.1e} of the spread {spread:.3g}")
    assert spread > 1e-3  # the patches get clearly different scores
    assert err <= SPREAD_TOL * spread


@pytest.mark.parametrize("kind", ["attention", "concat"])
def test_converted_scores_equal_fork_torch(cases, x, kind):
    case = cases[kind]
    loaded = keras.saving.load_model(case["dst"])
    assert loaded.backbone_name == "swin_micro" and loaded.multiscale
    assert loaded.attention == (kind == "attention")
    _check_scores(_np(loaded(x, training=False)), case["scores"], f"torch {kind}")
    if kind == "attention":
        w = _np(loaded.fusion_weights(x))
        assert w.shape == (4, 4)
        np.testing.assert_allclose(w, case["weights"], rtol=0, atol=1e-5)
        assert np.ptp(w[:, 0]) > 0.05  # the weights differ between images
    else:
        with pytest.raises(UserError, match="no attention fusion"):
            loaded.fusion_weights(x)


def test_converted_scores_equal_fork_jax(cases):
    code = f"""
        import json, numpy as np, keras, keras_hyperiqa
        x = np.load({str(cases['attention']['dst'].parent / 'x.npy')!r})
        out = {{}}
        for kind in ("attention", "concat"):
            m = keras.saving.load_model({str(cases['attention']['dst'].parent)!r} + f"/{{kind}}.keras")
            out[kind] = np.asarray(m(x, training=False)).tolist()
            if m.attention:
                out["weights"] = np.asarray(m.fusion_weights(x)).tolist()
        print("RESULT" + json.dumps(out))
    """
    result = json.loads(run_backend("jax", code).split("RESULT", 1)[1])
    for kind in ("attention", "concat"):
        _check_scores(result[kind], cases[kind]["scores"], f"jax {kind}")
    np.testing.assert_allclose(result["weights"], cases["attention"]["weights"], rtol=0, atol=1e-5)


def test_architecture_detected_from_keys(cases):
    for kind, attention in (("attention", True), ("concat", False)):
        sd = {k: v.numpy() for k, v in cases[kind]["net"].fork_state_dict().items()}
        arch = detect_architecture(sd)
        assert arch["backbone"] == "swin_micro" and arch["multiscale"] and arch["attention"] == attention
        assert arch["target_dims"] == (224, 112, 56, 28, 14, 1)
        assert arch["head_widths"] == (512, 256) and arch["hyper_in"] == 112


def test_every_mismatch_is_listed_and_nothing_written(cases, tmp_path):
    sd = cases["attention"]["net"].fork_state_dict()
    del sd["fc3b_fc.bias"]
    del sd["swin.backbone.layers_2.blocks.1.mlp.fc2.weight"]
    sd["multiscale_attention.attention_net.3.bias"] = torch.zeros(5)
    sd["extra.weight"] = torch.zeros(3)
    src, dst = tmp_path / "bad.pkl", tmp_path / "bad.keras"
    torch.save(sd, src)
    with pytest.raises(UserError) as err:
        convert_checkpoint(src, dst)
    message = str(err.value)
    for key in ("fc3b_fc.bias", "layers.2.blocks.1.mlp.fc2.weight",
                "multiscale_attention.attention_net.3.bias", "extra.weight"):
        assert key in message, message
    assert not dst.exists()


def test_attention_is_in_the_hypernet_group(cases):
    """As the fork's solver: everything outside ``swin`` (attention included)
    gets the hypernet lr, ``swin`` (backbone + LDA taps) the backbone lr."""
    net, model = cases["attention"]["net"], cases["attention"]["model"]
    swin_ids = {id(p) for p in net.swin.parameters()}
    fork_backbone = sum(p.numel() for p in net.swin.parameters())
    fork_hypernet = sum(p.numel() for p in net.parameters() if id(p) not in swin_ids)
    attention = sum(p.numel() for p in net.multiscale_attention.parameters())
    size = lambda vs: sum(int(np.prod(v.shape)) for v in vs)  # noqa: E731
    assert size(model.backbone_variables) == fork_backbone
    assert size(model.hypernet_variables) == fork_hypernet
    assert size(model.fusion.trainable_variables) == attention == 128 * 256 + 256 + 256 * 4 + 4
    hyper_ids = {id(v) for v in model.hypernet_variables}
    assert all(id(v) in hyper_ids for v in model.fusion.trainable_variables)
    assert not hyper_ids & {id(v) for v in model.backbone_variables}
    assert hyper_ids | {id(v) for v in model.backbone_variables} == {
        id(v) for v in model.trainable_variables}


def test_drop_path_rates_are_timms(cases):
    """Stochastic depth rises linearly over the blocks, as in the fork's timm Swin."""
    model = cases["attention"]["model"]
    ours = [float(getattr(b.drop_path, "rate", 0.0))
            for stage in model.backbone.stages for b in stage.blocks]
    theirs = [float(getattr(m, "drop_prob", 0.0)) for n, m in cases["attention"]["net"].named_modules()
              if n.endswith("drop_path1")]
    assert len(ours) == len(theirs) == 8 and ours[-1] == pytest.approx(0.2)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


@pytest.mark.parametrize("options, stochastic", [
    (dict(dropout=0.3), True),
    (dict(drop_path=0.2), True),
    (dict(attention=True), True),  # the fusion's own Dropout(0.5)
    (dict(), False),
])
def test_dropout_and_drop_path_only_in_training(x, options, stochastic):
    keras.utils.set_random_seed(0)
    model = HyperIQA(backbone="swin_micro", multiscale=True, **options)
    xs = x[:2]
    eval_1, eval_2 = _np(model(xs, training=False)), _np(model(xs, training=False))
    train_1, train_2 = _np(model(xs, training=True)), _np(model(xs, training=True))
    np.testing.assert_array_equal(eval_1, eval_2)
    if stochastic:
        assert np.abs(train_1 - eval_1).max() > 1e-6 and np.abs(train_1 - train_2).max() > 1e-6
    else:  # no random layer: training forward == inference forward
        np.testing.assert_allclose(train_1, eval_1, rtol=1e-6, atol=1e-7)


def test_default_models_unchanged():
    """No new layer or variable unless asked: today's files and configs load as they did."""
    keras.utils.set_random_seed(0)
    plain = HyperIQA(backbone="swin_micro", multiscale=True)
    assert plain.seed == 0  # no mask seed drawn from Python's stream
    assert plain.fusion is None and plain.hyper_head.dropout is None and plain.target_dropout is None
    assert all(type(b.drop_path).__name__ == "Identity"
               for stage in plain.backbone.stages for b in stage.blocks)
    config = plain.get_config()
    assert (config["attention"], config["dropout"], config["drop_path"]) == (False, 0.0, 0.0)
    old = {k: v for k, v in config.items() if k not in ("attention", "dropout", "drop_path")}
    rebuilt = HyperIQA.from_config(old)
    assert [v.path for v in rebuilt.weights] == [v.path for v in plain.weights]
    with pytest.raises(UserError, match="needs multiscale"):
        HyperIQA(backbone="swin_micro", attention=True)


def _dataset(root):
    return write_csv_dataset(root, noisy_ramps(8, 4, 15, (232, 240)), [100 - 20 * (i % 4) for i in range(8)],
                             [f"c{i // 2}" for i in range(8)])


def test_fit_trains_the_fork_model_and_convert_reads_its_checkpoints(cases, tmp_path):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "run"
    args = ["fit", "--dataset", "csv", "--root", str(data), "--out", str(out), "--backbone", "swin_micro",
            "--backbone-weights", "none", "--multiscale", "--attention", "--dropout", "0.3",
            "--drop-path", "0.2", "--epochs", "1", "--batch-size", "4", "--train-patches", "1",
            "--test-patches", "1", "--val-fraction", "0", "--workers", "1"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    options = json.loads((out / "config.json").read_text())["options"]
    assert (options["attention"], options["dropout"], options["drop_path"]) == (True, 0.3, 0.2)
    model = keras.saving.load_model(out / "model.keras")
    assert (model.attention, model.dropout, model.drop_path) == (True, 0.3, 0.2)

    dst = tmp_path / "converted.keras"
    result = CliRunner().invoke(cli, ["convert", str(cases["concat"]["src"]), str(dst)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    converted = keras.saving.load_model(dst)
    assert converted.multiscale and not converted.attention and converted.resize == (512, 384)

    for bad, message in ((["--attention"], "add --multiscale"),
                         (["--backbone", "resnet_tiny", "--drop-path", "0.1"], "needs a Swin"),
                         (["--dropout", "1.5"], "must be in [0, 1)")):
        result = CliRunner().invoke(cli, ["fit", *bad], catch_exceptions=False)
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.slow
def test_swin_tiny_checkpoint_parity(tmp_path):
    """A swin_tiny fork checkpoint with attention: converted scores on torch and jax."""
    net = _fork(True, overrides={}, seed=1)
    xs = ref.test_patches(4, seed=1)
    with torch.no_grad():
        scores = net(xs).numpy()
    src, dst = tmp_path / "tiny.pkl", tmp_path / "tiny.keras"
    torch.save(net.fork_state_dict(), src)
    model = convert_checkpoint(src, dst, resize=None)
    assert model.backbone_name == "swin_tiny" and model.attention
    _check_scores(_np(model(xs, training=False)), scores, "torch swin_tiny")
    np.save(tmp_path / "x.npy", xs)
    code = f"""
        import numpy as np, keras, keras_hyperiqa
        m = keras.saving.load_model({str(dst)!r})
        print("RESULT", np.asarray(m(np.load({str(tmp_path / 'x.npy')!r}), training=False)).tolist())
    """
    jax_scores = json.loads(run_backend("jax", code).split("RESULT", 1)[1])
    _check_scores(jax_scores, scores, "jax swin_tiny")


_JAX_STEP = """
    import json, numpy as np, keras, keras_hyperiqa
    from keras_hyperiqa.training import HyperAdam, Trainer
    m = keras.saving.load_model({path!r})
    x, y = np.load({x!r}), np.load({y!r})
    before = [np.array(v.value) for v in m.trainable_variables]
    trainer = Trainer(m, HyperAdam(learning_rate=1e-4, weight_decay=5e-4))
    loss = trainer.train_step(x, y)
    delta = [np.array(v.value) - b for v, b in zip(m.trainable_variables, before)]
    np.savez({out!r}, *delta)
    print("RESULT" + json.dumps(dict(loss=float(loss),
                                     predictions=np.asarray(trainer.last_predictions).tolist())))
"""


def test_seeded_training_step_equal_on_torch_and_jax(x, tmp_path):
    """Dropout, the fusion's dropout and drop-path all draw, and draw the same
    masks on both backends: one Trainer step from the same file gives the same
    loss, predictions and weight updates."""
    from keras_hyperiqa.training import HyperAdam, Trainer

    keras.utils.set_random_seed(3)
    model = HyperIQA(backbone="swin_micro", multiscale=True, attention=True, dropout=0.3, drop_path=0.2)
    model.build((None, 224, 224, 3))
    path = tmp_path / "fork.keras"
    model.save(path)
    xs, ys = x[:4], np.array([30.0, 45.0, 60.0, 80.0], "float32")
    np.save(tmp_path / "x.npy", xs)
    np.save(tmp_path / "y.npy", ys)
    eval_scores = _np(model(xs, training=False))
    before = [_np(v).copy() for v in model.trainable_variables]
    trainer = Trainer(model, HyperAdam(learning_rate=1e-4, weight_decay=5e-4))
    loss = trainer.train_step(xs, ys)
    predictions = _np(trainer.last_predictions)
    delta = [_np(v) - b for v, b in zip(model.trainable_variables, before)]
    # The step's forward is a training one: masks were drawn.
    assert np.abs(predictions - eval_scores).max() > 1e-4 * np.abs(eval_scores).max()

    out = tmp_path / "jax_delta.npz"
    code = _JAX_STEP.format(path=str(path), x=str(tmp_path / "x.npy"), y=str(tmp_path / "y.npy"),
                            out=str(out))
    result = json.loads(run_backend("jax", code).split("RESULT", 1)[1])
    jax_delta = np.load(out)
    jax_delta = [jax_delta[f"arr_{i}"] for i in range(len(jax_delta.files))]
    scale = np.abs(predictions).max()
    pred_err = np.abs(np.array(result["predictions"]) - predictions).max() / scale
    step_err = max(float(np.abs(a - b).max()) for a, b in zip(delta, jax_delta))
    largest = max(float(np.abs(d).max()) for d in delta)
    flat = np.concatenate([d.ravel() for d in delta])
    flat_jax = np.concatenate([d.ravel() for d in jax_delta])
    l2_err = float(np.linalg.norm(flat - flat_jax) / np.linalg.norm(flat))
    print(f"\ntorch vs jax training step: loss {loss:.6f} / {result['loss']:.6f}, "
          f"predictions rel {pred_err:.1e}, weight updates max diff {step_err:.1e} (largest update "
          f"{largest:.1e}), relative L2 {l2_err:.1e}, "
          f"share off by > 1% of the largest {np.mean(np.abs(flat - flat_jax) > 0.01 * largest):.1e}")
    # float32 forwards in another order: ~1e-6 relative; one differing mask
    # moves a prediction by far more than 1e-4 of the largest.
    assert pred_err <= 1e-4
    assert abs(result["loss"] - loss) <= 1e-4 * abs(loss)
    # Adam's first step is about lr * sign(grad) per weight; updates agree
    # to a small part of that except where a gradient is ~0 on both.
    assert l2_err <= 1e-3 and step_err <= 0.1 * largest


def _numpy_counter_uniform(n, seed, counter):
    """``counter_uniform`` in numpy uint32 arithmetic (wrapping by definition)."""
    def mix(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))

    with np.errstate(over="ignore"):
        key = mix(np.uint32(counter) * np.uint32(0x9E3779B1) + np.uint32(seed))
        h = mix(np.arange(n, dtype=np.uint32) * np.uint32(0x27D4EB2F) + key)
    return (h >> np.uint32(8)).astype(np.float32) / np.float32(1 << 24)


def test_counter_uniform_is_the_uint32_hash():
    """The int32 ops (wrapping multiply, masked arithmetic shift) give the
    bits of the unsigned hash; the draws are uniform and change with the
    counter and the seed."""
    from keras_hyperiqa.model.layers import counter_uniform

    n = 200_000
    ours = _np(counter_uniform((n,), 12345, 7))
    np.testing.assert_array_equal(ours, _numpy_counter_uniform(n, 12345, 7))
    assert abs(ours.mean() - 0.5) < 0.005 and ours.min() >= 0 and ours.max() < 1
    assert abs(np.mean(ours < 0.3) - 0.3) < 0.005
    assert np.mean(ours == _np(counter_uniform((n,), 12345, 8))) < 1e-3
    assert np.mean(ours == _np(counter_uniform((n,), 12346, 7))) < 1e-3
