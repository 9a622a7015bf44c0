"""HyperIQA (ResNet-50) against the reference maths, conversion errors, save/load."""

import os

import numpy as np
import pytest
import torch

from conftest import run_backend
from reference_hyperiqa import hyperiqa_forward, random_original_state_dict

from keras_hyperiqa.convert.original import (
    KONIQ_RESIZE,
    convert_original_checkpoint,
    load_original_checkpoint,
)
from keras_hyperiqa.errors import UserError


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    """A random original-format checkpoint, its Keras conversion, and test patches."""
    d = tmp_path_factory.mktemp("original")
    sd = random_original_state_dict(seed=0)
    src = d / "koniq_pretrained.pkl"
    torch.save(sd, src)
    dst = d / "model.keras"
    model = convert_original_checkpoint(src, dst)
    x = np.random.RandomState(1).uniform(0, 255, (3, 224, 224, 3)).astype("float32")
    np.save(d / "x.npy", x)
    ref = hyperiqa_forward(x, {k: v.numpy() for k, v in sd.items()})
    return dict(dir=d, sd=sd, src=src, dst=dst, model=model, x=x, ref=ref)


def _scores(model, x):
    return np.asarray(model(x, training=False).detach().cpu())


def test_parameter_groups_match_reference(original):
    model = original["model"]
    size = lambda vs: sum(int(np.prod(v.shape)) for v in vs)  # noqa: E731
    assert size(model.trainable_variables) == 27_375_369
    assert size(model.backbone_variables) == 23_983_392
    assert size(model.hypernet_variables) == 3_391_977
    ids_b = {id(v) for v in model.backbone_variables}
    ids_h = {id(v) for v in model.hypernet_variables}
    assert not ids_b & ids_h
    assert ids_b | ids_h == {id(v) for v in model.trainable_variables}


def test_converted_scores_equal_reference_torch(original):
    ours = _scores(original["model"], original["x"])
    ref = original["ref"]
    spread = ref.max() - ref.min()
    assert spread > 0
    assert np.abs(ours - ref).max() <= 1e-4 * spread
    assert original["model"].resize == KONIQ_RESIZE


def test_converted_file_scores_equal_reference_jax_and_torch(original):
    """The .keras written under torch loads under jax (and torch) with the reference scores."""
    code = f"""
        import numpy as np, keras_hyperiqa, keras
        m = keras.saving.load_model({str(original['dst'])!r})
        x = np.load({str(original['dir'] / 'x.npy')!r})
        np.save({str(original['dir'] / 'jax_scores.npy')!r}, np.asarray(m(x, training=False)))
        print(m.resize)
    """
    out = run_backend("jax", code)
    assert out.strip() == "(512, 384)"
    jax_scores = np.load(original["dir"] / "jax_scores.npy")
    ref = original["ref"]
    assert np.abs(jax_scores - ref).max() <= 1e-4 * (ref.max() - ref.min())
    torch_scores = _scores(original["model"], original["x"])
    assert np.abs(jax_scores - torch_scores).max() <= 1e-5 * np.abs(torch_scores).max()


def test_jax_saved_model_loads_under_torch(original, tmp_path):
    jax_file = tmp_path / "from_jax.keras"
    code = f"""
        import numpy as np, keras_hyperiqa, keras
        m = keras.saving.load_model({str(original['dst'])!r})
        m.save({str(jax_file)!r})
    """
    run_backend("jax", code)
    import keras

    loaded = keras.saving.load_model(jax_file)
    ours = _scores(loaded, original["x"])
    ref = _scores(original["model"], original["x"])
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()


def test_wrapped_state_dict_is_accepted(original, tmp_path):
    src = tmp_path / "wrapped.pth"
    torch.save({"state_dict": original["sd"], "epoch": 3}, src)
    model = load_original_checkpoint(src)
    assert np.allclose(_scores(model, original["x"][:1]), _scores(original["model"], original["x"][:1]))


@pytest.mark.parametrize("case", ["truncated", "renamed", "shape", "extra"])
def test_conversion_errors_leave_destination_untouched(original, tmp_path, case):
    sd = dict(original["sd"])
    src = tmp_path / "src.pth"
    if case == "truncated":
        src.write_bytes(original["src"].read_bytes()[:100_000])
        expect = "not a readable torch checkpoint"
    else:
        if case == "renamed":
            sd["fc3w_conv.weight_renamed"] = sd.pop("fc3w_conv.weight")
            expect = "missing keys: fc3w_conv.weight; unexpected keys: fc3w_conv.weight_renamed"
        elif case == "shape":
            sd["res.lda2_fc.weight"] = torch.zeros(16, 500)
            expect = "wrong shapes: res.lda2_fc.weight [16, 500]"
        else:
            sd["res.layer5.0.conv1.weight"] = torch.zeros(3)
            expect = "unexpected keys: res.layer5.0.conv1.weight"
        torch.save(sd, src)
    dst = tmp_path / "out.keras"
    dst.write_bytes(b"previous contents")
    with pytest.raises(UserError) as err:
        convert_original_checkpoint(src, dst)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(str(src))
    assert expect in message
    assert dst.read_bytes() == b"previous contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.keras", "src.pth"]


def test_destination_must_be_keras_file(original, tmp_path):
    with pytest.raises(UserError, match="must end in .keras"):
        convert_original_checkpoint(original["src"], tmp_path / "model.h5")
    assert not os.path.exists(tmp_path / "model.h5")


class _Payload:
    """A Python object in a torch file: weights_only loading refuses it."""


def test_convert_says_what_a_non_checkpoint_file_is(tmp_path):
    from keras_hyperiqa.convert.state_dict import read_state_dict
    from PIL import Image

    text, image, objects = tmp_path / "notes.txt", tmp_path / "photo.jpg", tmp_path / "objects.pt"
    text.write_text("hello\n")
    Image.new("RGB", (8, 8)).save(image)
    torch.save({"a": _Payload()}, objects)
    keras_file = tmp_path / "model.keras"
    import zipfile

    with zipfile.ZipFile(keras_file, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"")
    expected = {
        text: "not a readable torch checkpoint (expected a state dict saved by torch.save, or a .safetensors file)",
        image: "a JPEG image, not a checkpoint",
        objects: "a torch file holding Python objects besides tensors, not a state dict",
        keras_file: "a .keras model, not a checkpoint to convert",
    }
    for path, message in expected.items():
        with pytest.raises(UserError) as info:
            read_state_dict(path)
        assert str(info.value).startswith(f"{path}: {message}"), str(info.value)
        assert "weights_only" not in str(info.value)
