"""HyperIQA-Swin (issue 6): groups, forward, .keras round trip, training, timm weights.

Swin-T only (small batches). The jax side runs in a subprocess that loads the
torch-saved multi-scale file (which also runs the single-scale path: the head
just sees more channels), scores the patches, checks the variable groups and takes one training step.
"""

import functools
import json
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import keras_hyperiqa  # noqa: E402,F401  (sets KERAS_BACKEND=torch if unset)
import keras  # noqa: E402

from conftest import run_backend  # noqa: E402
from keras_hyperiqa.convert.backbone import load_backbone_weights  # noqa: E402
from keras_hyperiqa.model.hyperiqa import IMAGENET_MEAN, IMAGENET_STD, HyperIQA  # noqa: E402
from keras_hyperiqa.numerics import forward_tolerance, reduction_length  # noqa: E402
from keras_hyperiqa.training import HyperAdam, Trainer  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:Layer 'attn' \\(of type WindowAttention\\):UserWarning")

TIMM_NAME = "swin_tiny_patch4_window7_224"
GENERATORS = 711_545  # fc1w..fc5w + fc1b..fc5b for target dims (224, 112, ..., 1)


def _np(v):
    if isinstance(v, keras.Variable):
        v = v.value
    if hasattr(v, "detach"):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _size(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def _conv(cin, cout, bias=True):
    return cin * cout + (cout if bias else 0)


@functools.lru_cache(maxsize=1)
def _timm_features_count():
    feats = timm.create_model(TIMM_NAME, features_only=True, pretrained=False)
    names = [n for n, _ in feats.named_parameters()]
    # features_only drops the final norm (only patch_embed.norm and the
    # blocks'/merges' norms are there).
    assert not [n for n in names if n.startswith("norm.")]
    return sum(p.numel() for p in feats.parameters())


def _expected_counts(multiscale):
    """(backbone group, hypernet group) from timm and the reference's layer list."""
    swin = _timm_features_count()
    lda = (_conv(96, 16, False) + _conv(16 * 8 * 8, 16)
           + _conv(192, 32, False) + _conv(32 * 4 * 4, 16)
           + _conv(384, 64, False) + _conv(64 * 2 * 2, 16)
           + _conv(768, 224 - 3 * 16))
    head_in = 96 + 192 + 384 + 768 if multiscale else 768
    head = _conv(head_in, 512) + _conv(512, 256) + _conv(256, 112)
    return swin + lda, head + GENERATORS


@pytest.fixture(scope="module")
def x():
    return np.random.RandomState(1).uniform(0, 255, (2, 224, 224, 3)).astype("float32")


@pytest.fixture(scope="module")
def single(x):
    keras.utils.set_random_seed(0)
    model = HyperIQA(backbone="swin_tiny")
    return {"model": model, "scores": _np(model(x, training=False))}


_JAX_CODE = """
    import json, jax, numpy as np, keras_hyperiqa, keras
    from keras_hyperiqa.training import HyperAdam, Trainer
    m = keras.saving.load_model({path!r})
    x = np.load({x!r})
    size = lambda vs: sum(int(np.prod(v.shape)) for v in vs)
    ids_b = {{id(v) for v in m.backbone_variables}}
    ids_h = {{id(v) for v in m.hypernet_variables}}
    out = dict(
        n_weights=len(m.weights), n_unique=len({{id(v) for v in m.weights}}),
        backbone=size(m.backbone_variables), hypernet=size(m.hypernet_variables),
        disjoint=not (ids_b & ids_h),
        cover=(ids_b | ids_h) == {{id(v) for v in m.trainable_variables}},
        frozen=list(m.frozen_backbone_layers),
    )
    # jit: eager jax compiles op by op, which is slow on CPU.
    fwd = jax.jit(lambda tv, ntv, x: m.stateless_call(tv, ntv, x, training=False)[0])
    out["scores"] = np.asarray(fwd([v.value for v in m.trainable_variables],
                                   [v.value for v in m.non_trainable_variables],
                                   x)).tolist()
    groups = dict(backbone=m.backbone_variables, hypernet=m.hypernet_variables,
                  norm=m.backbone.get_layer("norm").weights)
    before = {{k: [np.array(v) for v in vs] for k, vs in groups.items()}}
    trainer = Trainer(m, HyperAdam(learning_rate=1e-4, weight_decay=5e-4))
    out["loss"] = trainer.train_step(x, np.array([40.0, 70.0], "float32"))
    # No dropout / drop path / batch norm in this Swin: the training forward
    # is the inference forward at the pre-step weights.
    out["train_scores"] = np.asarray(trainer.last_predictions).tolist()
    for k, vs in groups.items():
        out[k + "_changed"] = sum(
            bool(np.any(np.array(v) != b)) for v, b in zip(vs, before[k]))
        out[k + "_count"] = len(vs)
    print("RESULT" + json.dumps(out))
"""


def _run_jax(multi):
    d = multi["path"].parent
    code = _JAX_CODE.format(path=str(multi["path"]), x=str(d / "x.npy"))
    out = run_backend("jax", code)
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def multi(x, tmp_path_factory):
    """Multi-scale model and its .keras file, saved under torch."""
    d = tmp_path_factory.mktemp("swin_multi")
    keras.utils.set_random_seed(1)
    model = HyperIQA(backbone="swin_tiny", multiscale=True)
    scores = _np(model(x, training=False))
    path = d / "multi.keras"
    model.save(path)
    np.save(d / "x.npy", x)
    return {"model": model, "scores": scores, "path": path}


@pytest.mark.parametrize("kind", ["multi", "single"])
def test_parameter_groups(kind, request):
    model = request.getfixturevalue(kind)["model"]
    backbone, hypernet = _size(model.backbone_variables), _size(model.hypernet_variables)
    print(f"\nswin_tiny {kind}: backbone group {backbone:,}, hypernet group {hypernet:,}")
    assert (backbone, hypernet) == _expected_counts(kind == "multi")
    assert (backbone, hypernet) == {
        "single": (27_714_138, 1_265_385), "multi": (27_714_138, 1_609_449)}[kind]
    ids_b = {id(v) for v in model.backbone_variables}
    ids_h = {id(v) for v in model.hypernet_variables}
    assert not ids_b & ids_h
    assert ids_b | ids_h == {id(v) for v in model.trainable_variables}
    assert len(ids_b) + len(ids_h) == len(model.trainable_variables)
    # The backbone's final norm is never run: frozen, out of both groups,
    # still a weight of the model (so timm's norm loads and saves).
    assert model.frozen_backbone_layers == ("norm",)
    norm_ids = {id(v) for v in model.backbone.get_layer("norm").weights}
    assert len(norm_ids) == 2 and not norm_ids & (ids_b | ids_h)
    assert norm_ids <= {id(v) for v in model.weights}
    # Every variable the forward uses is in a group (the feature model + taps + head).
    used = {id(v) for v in model.backbone_features.weights}
    assert used <= ids_b
    assert len(model.weights) == len({id(v) for v in model.weights}) == 208


def test_stage_features_torch(single, x):
    """The model's stage maps are its feature model's outputs on the normalised patches."""
    model = single["model"]
    stages = [_np(t) for t in model.stage_features(x)]
    assert [t.shape for t in stages] == [
        (2, 56, 56, 96), (2, 28, 28, 192), (2, 14, 14, 384), (2, 7, 7, 768)]
    mean, std = np.array(IMAGENET_MEAN, "float32"), np.array(IMAGENET_STD, "float32")
    direct = model.backbone_features((x / 255.0 - mean) / std, training=False)
    for ours, theirs in zip(stages, direct):
        theirs = _np(theirs)
        assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


@pytest.mark.parametrize("multiscale", [False, True], ids=["single", "multi"])
def test_forward_equals_the_reference(multiscale):
    """Head, taps, target net and (multi-scale) the pooled stage concatenation
    against the Swin fork's network restated in torch.nn (reference_smart_iqa,
    its attention-free variants), on swin_micro with the fork's random weights
    ported by the converter's key table."""
    import reference_smart_iqa as ref

    from keras_hyperiqa.convert.smart_iqa import load_smart_iqa

    torch.manual_seed(0)
    net = ref.randomise(ref.HyperNet("tiny", use_multiscale=multiscale, use_attention=False,
                                     swin_overrides=ref.MICRO), seed=2).eval()
    patches = ref.test_patches(4)
    with torch.no_grad():
        want = net(patches).numpy()
    model = load_smart_iqa({k: v.numpy() for k, v in net.fork_state_dict().items()},
                           resize=None, dropout=0.0, drop_path=0.0)
    assert model.backbone_name == "swin_micro" and model.multiscale == multiscale
    assert model.head_widths == (512, 256) and not model.attention
    got = _np(model(patches, training=False))
    spread, err = float(np.ptp(want)), float(np.abs(got - want).max())
    print(f"\n{'multi' if multiscale else 'single'}-scale swin_micro vs the fork: "
          f"max diff {err:.2e}, {err / spread:.1e} of the spread {spread:.3g}")
    assert spread > 1e-2 * np.abs(want).max()  # the patches get clearly different scores
    # A float32 forward in another order differs by ~1e-6 of the spread; a
    # mis-pooled stage or a mis-ported key moves the scores by more than 1e-2 of it.
    assert err <= 1e-4 * spread


def test_keras_round_trip_torch(single, x, tmp_path):
    model = single["model"]
    path = tmp_path / "single.keras"
    model.save(path)
    # The weights file stores each variable once (no copy under the feature model).
    import h5py

    with zipfile.ZipFile(path) as zf:
        zf.extract("model.weights.h5", tmp_path)
    stored = []
    with h5py.File(tmp_path / "model.weights.h5") as f:
        f.visititems(lambda name, o: stored.append(o.size)
                     if isinstance(o, h5py.Dataset) else None)
    assert len(stored) == len(model.weights) == 208
    assert sum(stored) == _size(model.weights)

    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, HyperIQA) and not loaded.multiscale
    assert loaded.frozen_backbone_layers == ("norm",)
    assert [v.path for v in loaded.weights] == [v.path for v in model.weights]
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(_np(a), _np(b), err_msg=a.path)
    assert [v.trainable for v in loaded.weights] == [v.trainable for v in model.weights]
    np.testing.assert_allclose(_np(loaded(x, training=False)), single["scores"],
                               rtol=1e-6, atol=0)


def test_training_step_torch(single, x):
    model = single["model"]
    groups = {"backbone": model.backbone_variables,
              "hypernet": model.hypernet_variables,
              "norm": model.backbone.get_layer("norm").weights}
    before = {k: [_np(v).copy() for v in vs] for k, vs in groups.items()}
    try:
        trainer = Trainer(model, HyperAdam(learning_rate=1e-4, weight_decay=5e-4))
        loss = trainer.train_step(x, np.array([40.0, 70.0], "float32"))
        assert np.isfinite(loss)
        changed = {k: [bool(np.any(_np(v) != b)) for v, b in zip(vs, before[k])]
                   for k, vs in groups.items()}
        # Adam moves every variable that gets a gradient (or weight decay).
        assert all(changed["backbone"]), [
            v.path for v, c in zip(groups["backbone"], changed["backbone"]) if not c]
        assert all(changed["hypernet"])
        assert not any(changed["norm"])
    finally:  # leave the module's model as it was
        for k, vs in groups.items():
            for v, b in zip(vs, before[k]):
                v.assign(b)


def test_timm_weights_into_model(x, tmp_path):
    torch.manual_seed(0)
    full = timm.create_model(TIMM_NAME, pretrained=False)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # move every parameter off its init (incl. norm, bias tables)
        for p in full.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    sd = {k: v.clone() for k, v in full.state_dict().items()}
    path = tmp_path / "swin_tiny.pth"
    torch.save(sd, path)

    feats = timm.create_model(TIMM_NAME, pretrained=False, features_only=True).eval()
    feats.load_state_dict(
        {k.replace("layers.", "layers_", 1): v for k, v in sd.items()
         if not k.startswith(("norm.", "head."))}, strict=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2) / 255.0
    with torch.no_grad():
        ref = [t.numpy() for t in feats((xt - mean) / std)]  # NHWC for Swin in timm 1.0

    model = HyperIQA(backbone="swin_tiny")
    load_backbone_weights(model, path)
    ours = [_np(t) for t in model.stage_features(x)]
    rels = []
    for o, r in zip(ours, ref):
        assert o.shape == r.shape
        rels.append(float(np.abs(o - r).max() / np.abs(r).max()))
    print("\nstage_features vs timm features_only, max rel per stage:",
          ", ".join(f"{r:.1e}" for r in rels))
    # Float32 error growth over Swin-T's kernels (keras_hyperiqa.numerics, two float32 runs).
    assert max(rels) <= forward_tolerance(reduction_length(model.backbone))
    # The (unused, frozen) final norm took timm's values too.
    np.testing.assert_array_equal(_np(model.backbone.get_layer("norm").weights[0]),
                                  sd["norm.weight"].numpy())


def test_torch_file_under_jax_scores_and_trains(multi):
    """The multi-scale .keras written under torch, loaded under jax: same
    scores, same groups, and one Trainer step moves both groups.

    One test (one subprocess: loading and compiling Swin under jax is most of
    its ~40 s), so that pytest-xdist cannot run it twice.
    """
    result = _run_jax(multi)
    ref = multi["scores"]
    rels = [float(np.abs(np.array(result[k]) - ref).max() / np.abs(ref).max())
            for k in ("scores", "train_scores")]
    print(f"\njax vs torch scores (multiscale, loaded file): rel {rels[0]:.2e}; "
          f"jax train-step forward: rel {rels[1]:.2e}")
    # Float32 error growth over the multi-scale Swin-T HyperIQA's kernels
    # (keras_hyperiqa.numerics: 4 sqrt(2 n) 2**-24 of the largest score, n ~ 46k).
    assert max(rels) <= forward_tolerance(reduction_length(multi["model"]))
    assert result["n_weights"] == result["n_unique"] == 208
    assert (result["backbone"], result["hypernet"]) == (27_714_138, 1_609_449)
    assert result["disjoint"] and result["cover"]
    assert result["frozen"] == ["norm"]
    assert np.isfinite(result["loss"])
    assert result["backbone_changed"] == result["backbone_count"] > 0
    assert result["hypernet_changed"] == result["hypernet_count"] > 0
    assert result["norm_changed"] == 0
