"""Swin backbone: keras-hub + our timm loader vs timm ``features_only``.

A timm ``swin_tiny_patch4_window7_224`` (``pretrained=False``, no download)
gets every persistent float tensor randomised, is saved with ``torch.save``,
loaded through ``load_timm_swin_weights`` and the four stage taps of
``swin_feature_model`` are compared with timm's ``features_only`` outputs on
the backend of this process and, in a subprocess, on the other of
torch / jax (Keras fixes its backend per process).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

import keras_hyperiqa  # noqa: E402,F401  (sets KERAS_BACKEND=torch if unset)
import keras  # noqa: E402

from keras_hyperiqa.convert.timm_swin import (  # noqa: E402
    load_timm_swin_weights,
    swin_weight_table,
)
from keras_hyperiqa.errors import UserError  # noqa: E402
from keras_hyperiqa.numerics import forward_tolerance, reduction_length  # noqa: E402
from keras_hyperiqa.model.swin import (  # noqa: E402
    SWIN_CONFIGS,
    build_swin_backbone,
    resolve_swin_name,
    stage_channels,
    swin_feature_model,
)

TIMM_NAME = "swin_tiny_patch4_window7_224"


def _rtol(backbone):
    """Float32 error growth over Swin-T's kernels (keras_hyperiqa.numerics: 4 sqrt(2 n) 2**-24
    of each stage's largest value, n ~ 36k: 6.4e-5; attention's own 32- and 49-long sums
    add under 5% to n). A wrong window, shift or weight layout moves features by 1e-2 and more."""
    return forward_tolerance(reduction_length(backbone))
# keras-hub's block passes the shift mask as ``mask=``; Keras warns about it
# (our module filters it, but pytest resets filters per test).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Layer 'attn' \\(of type WindowAttention\\):UserWarning")

EXPECTED_SHAPES = [(2, 56, 56, 96), (2, 28, 28, 192), (2, 14, 14, 384),
                   (2, 7, 7, 768)]


def _randomise(model, seed=0):
    """Give every persistent float tensor a non-init random value.

    Linear/conv weights ~ N(0, 0.02); their biases ~ N(0, 0.05); LayerNorm
    weights ~ 1 + N(0, 0.2) and biases ~ N(0, 0.1); relative position bias
    tables ~ N(0, 1) (large, so a wrong index or table layout shows).
    ``attn_mask`` (non-persistent, derived from the geometry) is left alone.
    """
    g = torch.Generator().manual_seed(seed)
    norm_names = {n for n, m in model.named_modules()
                  if isinstance(m, torch.nn.LayerNorm)}
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            owner, _, leaf = name.rpartition(".")
            r = torch.randn(t.shape, generator=g)
            if leaf == "relative_position_bias_table":
                t.copy_(r)
            elif owner in norm_names and leaf == "weight":
                t.copy_(1.0 + 0.2 * r)
            elif owner in norm_names and leaf == "bias":
                t.copy_(0.1 * r)
            elif leaf == "bias":
                t.copy_(0.05 * r)
            else:
                t.copy_(0.02 * r)


def _features_only_state_dict(sd):
    """timm features_only flattens ``layers.i`` to ``layers_i``; no norm/head."""
    out = {}
    for k, v in sd.items():
        if k.startswith(("norm.", "head.")):
            continue
        if k.startswith("layers."):
            k = "layers_" + k[len("layers."):]
        out[k] = v
    return out


def _np(x):
    """Backend tensor or keras Variable -> numpy (without keras' torch
    ``np.array(Variable)`` path, which warns under numpy 2)."""
    if isinstance(x, keras.Variable):
        x = x.value
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _rel(out, ref):
    return float(np.abs(out - ref).max() / np.abs(ref).max())


@pytest.fixture(scope="module")
def timm_case(tmp_path_factory):
    d = tmp_path_factory.mktemp("swin")
    torch.manual_seed(0)
    model = timm.create_model(TIMM_NAME, pretrained=False)
    _randomise(model)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    # timm 1.0 no longer saves this buffer; old checkpoints do.
    index = {k: v.clone() for k, v in model.named_buffers()
             if k.endswith("relative_position_index")}
    ckpt = d / "swin_tiny.pth"
    torch.save(sd, ckpt)

    feats = timm.create_model(TIMM_NAME, pretrained=False,
                              features_only=True).eval()
    feats.load_state_dict(_features_only_state_dict(sd), strict=True)
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = [t.numpy() for t in feats(x)]
    # timm 1.0 features_only returns NHWC for Swin: the shapes say so.
    assert [r.shape for r in ref] == EXPECTED_SHAPES
    x_nhwc = x.permute(0, 2, 3, 1).numpy()
    np.save(d / "x.npy", x_nhwc)
    return {"dir": d, "ckpt": ckpt, "sd": sd, "index": index, "x": x_nhwc,
            "ref": ref}


@pytest.fixture(scope="module")
def loaded_backbone(timm_case):
    backbone = build_swin_backbone("swin_tiny")
    ignored = load_timm_swin_weights(backbone, timm_case["ckpt"])
    assert ignored == ["head.fc.bias", "head.fc.weight"]
    return backbone


def _timm_architecture(timm_name):
    """What a timm Swin is built with, read off the model (on the meta device: no memory, no init)."""
    with torch.device("meta"):
        m = timm.create_model(timm_name, pretrained=False)
    return {
        "embed_dim": m.embed_dim,
        "depths": tuple(len(layer.blocks) for layer in m.layers),
        "num_heads": tuple(layer.blocks[0].attn.num_heads for layer in m.layers),
        "window_size": m.layers[0].blocks[0].window_size[0],
        "patch_size": m.patch_embed.patch_size[0],
        "image_size": m.patch_embed.img_size[0],
        "channels": tuple(layer.blocks[0].norm1.normalized_shape[0] for layer in m.layers),
    }


@pytest.mark.parametrize("name", [k for k, c in SWIN_CONFIGS.items() if c["timm_name"]])
def test_configs_are_the_timm_architectures(name, loaded_backbone):
    cfg = SWIN_CONFIGS[name]
    timm_arch = _timm_architecture(cfg["timm_name"])
    ours = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items()
            if k != "timm_name"}
    ours["channels"] = tuple(cfg["embed_dim"] * 2 ** i for i in range(len(cfg["depths"])))
    assert ours == timm_arch
    assert resolve_swin_name(cfg["timm_name"]) == resolve_swin_name(name) == name
    if name == "swin_tiny":  # the built backbone says the same
        assert stage_channels(loaded_backbone) == timm_arch["channels"]
        assert tuple(loaded_backbone.depths) == timm_arch["depths"]
    with pytest.raises(UserError, match="unknown Swin"):
        build_swin_backbone("swin_huge")


def test_stage_outputs_match_timm_this_backend(timm_case, loaded_backbone):
    model = swin_feature_model(loaded_backbone)
    outs = model(timm_case["x"], training=False)
    for i, (o, r) in enumerate(zip(outs, timm_case["ref"])):
        o = _np(o)
        assert o.shape == r.shape, i
        err = _rel(o, r)
        print(f"{keras.backend.backend()} stage {i + 1} rel {err:.2e}")
        assert err < _rtol(loaded_backbone), (i, err)


_OTHER_BACKEND_SCRIPT = r"""
import sys
import numpy as np
import keras_hyperiqa, keras
assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
from keras_hyperiqa.model.swin import build_swin_backbone, swin_feature_model
from keras_hyperiqa.convert.timm_swin import load_timm_swin_weights
b = build_swin_backbone("swin_tiny")
load_timm_swin_weights(b, sys.argv[2])
model = swin_feature_model(b)
x = np.load(sys.argv[3])
if keras.backend.backend() == "jax":
    # One jitted call: eager jax dispatches op by op, which is slow on CPU.
    import jax
    fn = jax.jit(lambda tv, ntv, x: model.stateless_call(
        tv, ntv, x, training=False)[0])
    outs = fn([v.value for v in model.trainable_variables],
              [v.value for v in model.non_trainable_variables], x)
else:
    outs = model(x, training=False)
np.savez(sys.argv[4], *[keras.ops.convert_to_numpy(o) for o in outs])
"""


def test_stage_outputs_match_timm_other_backend(timm_case, loaded_backbone):
    other = "jax" if keras.backend.backend() == "torch" else "torch"
    out_path = timm_case["dir"] / f"out_{other}.npz"
    env = dict(os.environ, KERAS_BACKEND=other, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", _OTHER_BACKEND_SCRIPT, other,
         str(timm_case["ckpt"]), str(timm_case["dir"] / "x.npy"),
         str(out_path)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with np.load(out_path) as outs:
        for i, r in enumerate(timm_case["ref"]):
            o = outs[f"arr_{i}"]
            assert o.shape == r.shape, i
            err = _rel(o, r)
            print(f"{other} stage {i + 1} rel {err:.2e}")
            assert err < _rtol(loaded_backbone), (i, err)


def _snapshot(backbone):
    return {v.path: _np(v).copy() for v in backbone.weights}


def _assert_weights_equal(backbone, snapshot):
    """Every backbone weight (not only those the loader's table names) equals the snapshot."""
    assert [v.path for v in backbone.weights] == list(snapshot)
    for v in backbone.weights:
        np.testing.assert_array_equal(_np(v), snapshot[v.path], err_msg=v.path)


def test_weight_table_covers_every_weight_once(loaded_backbone):
    table = swin_weight_table(loaded_backbone)
    ids = [id(v) for v, _, _ in table]
    assert len(ids) == len(set(ids)) == len({id(v) for v in loaded_backbone.weights})
    assert set(ids) == {id(v) for v in loaded_backbone.weights}
    assert len({key for _, key, _ in table}) == len(table)


def _old_layout(sd):
    """Original Swin / timm<0.9 names: merge at the end of the stage."""
    out = {}
    for k, v in sd.items():
        if k.startswith("layers.") and ".downsample." in k:
            i = int(k.split(".")[1])
            k = f"layers.{i - 1}." + k.split(".", 2)[2]
        k = k.replace("head.fc.", "head.")
        out[k] = v
    return out


@pytest.mark.parametrize("source", ["safetensors", "folder",
                                    "features_only", "old_layout", "wrapped"])
def test_other_sources_load_same_weights(timm_case, loaded_backbone, tmp_path,
                                         source):
    from safetensors.torch import save_file

    sd = timm_case["sd"]
    if source == "safetensors":
        src = tmp_path / "m.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, src)
    elif source == "folder":
        src = tmp_path / "hub"
        src.mkdir()
        (src / "config.json").write_text(json.dumps(
            {"architecture": TIMM_NAME, "num_classes": 1000}))
        save_file({k: v.contiguous() for k, v in sd.items()},
                  src / "model.safetensors")
    elif source == "features_only":
        src = _features_only_state_dict(sd)
    elif source == "old_layout":
        src = _old_layout({**sd, **timm_case["index"]})
    else:
        src = {"model": {"backbone." + k: v for k, v in sd.items()}}
    kwargs = {"prefix": "backbone."} if source == "wrapped" else {}
    # The fixture's weights (its stage outputs match timm's) are the target;
    # every weight is overwritten first, so a weight the load leaves alone fails.
    # features_only has no final norm (the model never runs it): that one is left as it was.
    before = _snapshot(loaded_backbone)
    fill = {path: np.full(a.shape, 0.125, "float32") for path, a in before.items()}
    want = dict(before)
    if source == "features_only":
        for v in loaded_backbone.get_layer("norm").weights:
            want[v.path] = fill[v.path]
    try:
        for v in loaded_backbone.weights:
            v.assign(fill[v.path])
        load_timm_swin_weights(loaded_backbone, src, **kwargs)
        _assert_weights_equal(loaded_backbone, want)
    finally:
        for v in loaded_backbone.weights:
            v.assign(before[v.path])


def test_missing_key_is_named(timm_case, loaded_backbone):
    sd = dict(timm_case["sd"])
    del sd["layers.2.blocks.3.attn.qkv.weight"]
    with pytest.raises(UserError,
                       match=r"missing keys: layers\.2\.blocks\.3\.attn\.qkv"):
        load_timm_swin_weights(loaded_backbone, sd)


def test_wrong_shape_is_named_and_nothing_assigned(timm_case, loaded_backbone):
    sd = dict(timm_case["sd"])
    sd["layers.1.downsample.reduction.weight"] = torch.zeros(10, 10)
    sd["patch_embed.proj.bias"] = torch.full((96,), 7.0)  # valid, new value
    sd["extra.weight"] = torch.zeros(3)
    before = _snapshot(loaded_backbone)
    with pytest.raises(UserError) as info:
        load_timm_swin_weights(loaded_backbone, sd)
    msg = str(info.value)
    assert "mis-shaped keys: layers.1.downsample.reduction.weight (10, 10)" in msg
    assert "unexpected keys: extra.weight" in msg
    # Validation happens before assignment: the backbone kept every weight.
    _assert_weights_equal(loaded_backbone, before)


def test_foreign_relative_position_index_is_refused(timm_case,
                                                   loaded_backbone):
    key = "layers.0.blocks.1.attn.relative_position_index"
    sd = {**timm_case["sd"], key: timm_case["index"][key].T.contiguous()}
    with pytest.raises(UserError, match="relative_position_index differs"):
        load_timm_swin_weights(loaded_backbone, sd)


def test_unreadable_path(tmp_path, loaded_backbone):
    with pytest.raises(UserError, match="no such file"):
        load_timm_swin_weights(loaded_backbone, tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(UserError, match="bad.pth: not a readable torch checkpoint"):
        load_timm_swin_weights(loaded_backbone, bad)
