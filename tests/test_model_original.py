"""HyperIQA (ResNet-50) against the reference maths, conversion errors, save/load."""

import json
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
from keras_hyperiqa.numerics import forward_tolerance, reduction_length


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


def _bound(model, implementations):
    """Largest score difference float32 rounding explains (keras_hyperiqa.numerics):
    4 sqrt(k n) 2**-24 of the largest score, n = the ResNet-50 HyperIQA's summed reduction
    lengths (about 67k: 8.7e-5 relative for two float32 runs, k = 2; 6.2e-5 against the
    float64 reference, k = 1). A wrong flatten order or a skipped batch norm moves the
    scores by 1e-3 and more of their size."""
    return forward_tolerance(reduction_length(model), implementations)


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
    assert ref.max() - ref.min() > 0
    assert np.abs(ours - ref).max() <= _bound(original["model"], 1) * np.abs(ref).max()
    assert original["model"].resize == KONIQ_RESIZE
    assert original["model"].higher_is_better is True  # the released checkpoint: KonIQ MOS


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
    assert np.abs(jax_scores - ref).max() <= _bound(original["model"], 1) * np.abs(ref).max()
    torch_scores = _scores(original["model"], original["x"])
    print(f"\njax vs torch: {np.abs(jax_scores - torch_scores).max():.3g} on scores up to "
          f"{np.abs(torch_scores).max():.3g}; bound {_bound(original['model'], 2):.3g} relative")
    assert np.abs(jax_scores - torch_scores).max() <= _bound(original["model"], 2) * np.abs(torch_scores).max()


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
    assert np.abs(ours - ref).max() <= _bound(original["model"], 2) * np.abs(ref).max()


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


# ------------------------------------------------------------- pyiqa format
def _pyiqa_layout(sd):
    """The original's keys renamed as pyiqa's ``HyperNet`` names them (reference section 7)."""
    out = {}
    for key, value in sd.items():
        if key.startswith("res.lda"):
            k, rest = int(key[7]), key.rsplit(".", 1)[1]
            if "_pool" in key:
                new = f"lda_modules.{k - 1}.0.{rest}"
            else:
                new = f"lda_modules.{k - 1}.{3 if k < 4 else 2}.{rest}"
        elif key.startswith("res."):
            new = "base_model." + key[4:]
        elif key.startswith("fc5w_fc."):
            new = "fc_w_modules.4.2." + key.split(".", 1)[1]
        elif key[:2] == "fc" and key[3:9] == "w_conv":
            new = f"fc_w_modules.{int(key[2]) - 1}." + key.split(".", 1)[1]
        elif key[:2] == "fc" and key[3:7] == "b_fc":
            new = f"fc_b_modules.{int(key[2]) - 1}.2." + key.split(".", 1)[1]
        else:
            new = key  # conv1.{0,2,4}.*
        out[new] = value
    return out


@pytest.fixture(scope="module")
def pyiqa_file(original):
    sd = _pyiqa_layout(original["sd"])
    assert len(sd) == len(original["sd"]) == 355
    path = original["dir"] / "HyperIQA-resnet50-koniq10k.pth"
    torch.save({"params": sd}, path)
    return path


def test_pyiqa_checkpoint_scores_equal_original_conversion(original, pyiqa_file, tmp_path):
    from keras_hyperiqa.convert.original import load_checkpoint

    model = load_checkpoint(pyiqa_file)
    ours, ref = _scores(model, original["x"]), _scores(original["model"], original["x"])
    assert np.abs(ours - ref).max() <= 1e-5
    # pyiqa's retrain: [0, 1]-normalised MOS, 25 evenly spaced crops of the full image.
    assert model.score_range == (0.0, 1.0)
    assert (model.test_patches, model.test_crops, model.resize) == (25, "grid", None)
    assert original["model"].score_range == (0.0, 100.0)
    # The metadata survives a .keras round trip.
    dst = tmp_path / "pyiqa.keras"
    convert_original_checkpoint(pyiqa_file, dst)
    from keras_hyperiqa.inference import load_model_file

    loaded = load_model_file(dst)
    assert (loaded.score_range, loaded.test_patches, loaded.test_crops) == ((0.0, 1.0), 25, "grid")


def test_unknown_checkpoint_format_lists_its_keys(tmp_path):
    src = tmp_path / "other.pth"
    torch.save({"encoder.weight": torch.zeros(2, 2), "head.bias": torch.zeros(2)}, src)
    with pytest.raises(UserError) as err:
        convert_original_checkpoint(src, tmp_path / "out.keras")
    message = str(err.value)
    assert "not a HyperIQA checkpoint" in message
    assert "encoder.weight" in message and "head.bias" in message


def test_pyiqa_checkpoint_with_foreign_keys_is_refused(original, tmp_path):
    sd = _pyiqa_layout(original["sd"])
    sd["lda_modules.4.0.weight"] = torch.zeros(3)
    src = tmp_path / "extra.pth"
    torch.save({"params": sd}, src)
    with pytest.raises(UserError, match="unexpected keys: lda_modules.4.0.weight"):
        convert_original_checkpoint(src, tmp_path / "out.keras")


def test_predict_scores_checkpoints_directly(original, pyiqa_file, tmp_path):
    """``predict`` takes koniq_pretrained.pkl or a pyiqa .pth and converts it in memory."""
    from click.testing import CliRunner
    from PIL import Image

    from keras_hyperiqa.cli import cli

    image = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (240, 260, 3), dtype=np.uint8)).save(image)
    from keras_hyperiqa.inference import Scorer

    keras_score = Scorer(original["model"], patches=1, resize=None).score(image)
    results = {}
    for name, model in (("pkl", original["src"]), ("pth", pyiqa_file)):
        result = CliRunner().invoke(cli, ["predict", str(model), str(image), "--patches", "1",
                                          "--resize", "none", "--format", "json"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        results[name] = (json.loads(result.stdout)[0]["score"], result.stderr)
    # Same tensors in both layouts: the same score, equal to the .keras conversion's.
    assert results["pkl"][0] == pytest.approx(keras_score, abs=1e-5)
    assert results["pth"][0] == pytest.approx(keras_score, abs=1e-5)
    # predict says which scale the scores are on and which crops it used.
    assert "[0, 1] scale" in results["pth"][1] and "1 grid crops" in results["pth"][1]
    assert "[0, 100] scale" in results["pkl"][1]


def test_onnx_export_scores_equal_keras(original, tmp_path):
    """``keras-hyperiqa export --format onnx``: onnxruntime alone scores as Keras does."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from click.testing import CliRunner

    from keras_hyperiqa.cli import cli

    out = tmp_path / "koniq.onnx"
    result = CliRunner().invoke(cli, ["export", str(original["dst"]), "--format", "onnx",
                                      "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = original["x"]
    keras_scores = _scores(original["model"], x)
    onnx_scores = session.run(None, {name: x})[0].reshape(-1)
    assert np.abs(onnx_scores - keras_scores).max() <= 1e-4
    # Any batch size (one image's 25 crops, say), and the preprocessing in the metadata.
    assert session.run(None, {name: x[:1]})[0].reshape(-1) == pytest.approx(onnx_scores[:1], abs=1e-4)
    meta = json.loads(session.get_modelmeta().custom_metadata_map["keras_hyperiqa"])
    assert meta["resize"] == [512, 384] and meta["patch_size"] == 224
    assert meta["score_range"] == [0.0, 100.0] and meta["test_patches"] == 25


def test_convert_to_keras_hub_preset(original, pyiqa_file, tmp_path):
    """``convert SRC --preset DIR`` and ``HyperIQA.from_preset(DIR)``."""
    from click.testing import CliRunner

    import keras_hyperiqa
    from keras_hyperiqa.cli import cli

    folder = tmp_path / "hyperiqa_koniq"
    result = CliRunner().invoke(cli, ["convert", str(pyiqa_file), "--preset", str(folder)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model = keras_hyperiqa.HyperIQA.from_preset(str(folder))
    assert np.abs(_scores(model, original["x"]) - _scores(original["model"], original["x"])).max() <= 1e-5
    assert (model.score_range, model.test_patches, model.resize) == ((0.0, 1.0), 25, None)


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
