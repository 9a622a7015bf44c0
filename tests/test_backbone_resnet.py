"""ImageNet backbone loading: timm ResNet-50 weights through our paths, on torch and jax."""

import json

import keras
import numpy as np
import pytest
import torch

from conftest import run_backend

from keras_hyperiqa.convert.backbone import load_backbone_weights
from keras_hyperiqa.errors import UserError
from keras_hyperiqa.model.hyperiqa import HyperIQA
from keras_hyperiqa.numerics import forward_tolerance, reduction_length

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def timm_resnet(tmp_path_factory):
    """timm resnet50 (pretrained=False) with randomised BN statistics, saved two ways."""
    d = tmp_path_factory.mktemp("timm_resnet50")
    torch.manual_seed(0)
    net = timm.create_model("resnet50", pretrained=False).eval()
    with torch.no_grad():
        for name, buf in net.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0, 0.2)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
        for name, p in net.named_parameters():
            if name.endswith(("bn1.weight", "bn2.weight", "bn3.weight", "downsample.1.weight")):
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    torch.save(net.state_dict(), d / "resnet50.pth")
    folder = d / "timm_dir"
    folder.mkdir()
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "resnet50", "num_classes": 1000, "num_features": 2048,
        "pretrained_cfg": {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406],
                           "std": [0.229, 0.224, 0.225], "crop_pct": 0.875},
    }))
    feats = timm.create_model("resnet50", pretrained=False, features_only=True, out_indices=(1, 2, 3, 4))
    feats.load_state_dict(net.state_dict(), strict=False)
    feats.eval()
    x = np.random.RandomState(0).uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    np.save(d / "x.npy", x)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        xt = (torch.as_tensor(x).permute(0, 3, 1, 2) / 255.0 - mean) / std
        ref = [f.permute(0, 2, 3, 1).numpy() for f in feats(xt)]
    for i, r in enumerate(ref):
        np.save(d / f"ref{i}.npy", r)
    return dict(dir=d, x=x, ref=ref)


def _rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def _rtol(model):
    """Float32 error growth over the ResNet-50 backbone's kernels (keras_hyperiqa.numerics:
    4 sqrt(2 n) 2**-24 of each stage's largest value, n ~ 53k: 7.8e-5). A wrong weight
    layout or a skipped batch norm moves the features by 1e-2 and more."""
    return forward_tolerance(reduction_length(model.backbone))


@pytest.mark.parametrize("source", ["resnet50.pth", "timm_dir"])
def test_stage_outputs_match_timm_torch(timm_resnet, source):
    model = HyperIQA(backbone="resnet50")
    load_backbone_weights(model, timm_resnet["dir"] / source)
    stages = model.stage_features(timm_resnet["x"])
    for ours, ref in zip(stages, timm_resnet["ref"]):
        assert tuple(ours.shape) == ref.shape
        assert _rel(keras.ops.convert_to_numpy(ours), ref) <= _rtol(model)


def test_stage_outputs_match_timm_jax(timm_resnet):
    d = timm_resnet["dir"]
    code = f"""
        import numpy as np, keras_hyperiqa
        from keras_hyperiqa.model.hyperiqa import HyperIQA
        from keras_hyperiqa.convert.backbone import load_backbone_weights
        m = HyperIQA(backbone="resnet50")
        load_backbone_weights(m, {str(d / 'resnet50.pth')!r})
        for i, f in enumerate(m.stage_features(np.load({str(d / 'x.npy')!r}))):
            np.save({str(d)!r} + f"/jax{{i}}.npy", np.asarray(f))
    """
    run_backend("jax", code)
    model = HyperIQA(backbone="resnet50")
    for i, ref in enumerate(timm_resnet["ref"]):
        print(f"jax stage {i + 1} rel {_rel(np.load(d / f'jax{i}.npy'), ref):.2e}")
        assert _rel(np.load(d / f"jax{i}.npy"), ref) <= _rtol(model)


def test_wrong_architecture_is_a_clear_error(timm_resnet):
    model = HyperIQA(backbone="resnet18")
    with pytest.raises(UserError) as err:
        load_backbone_weights(model, timm_resnet["dir"] / "resnet50.pth")
    message = str(err.value)
    assert "resnet50.pth: does not match the model" in message
    assert "wrong shapes" in message and "unexpected keys: " in message
    assert "layer1.0.conv3.weight" in message.split("unexpected keys: ")[1]


def test_missing_weights_file_is_a_clear_error(tmp_path):
    model = HyperIQA(backbone="resnet_tiny")
    with pytest.raises(UserError, match="no such file"):
        load_backbone_weights(model, tmp_path / "nope.pth")
