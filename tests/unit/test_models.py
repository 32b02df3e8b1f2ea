"""Tests for the model registry (snakescope.engine.models, .networks): every network builds for its tasks and input
channels, returns logits of the documented shape, keeps dropout where MC dropout expects it, and takes
pretrained weights whose first convolution has another channel count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from snakescope.engine.models import CLASSIFICATION, DENSE, MODELS, ModelSpec, build_model
from snakescope.engine.networks import Classifier, dropout_modules, load_pretrained

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
CLASSIFIERS = [name for name, entry in MODELS.items() if "classification" in entry.tasks]
DENSE_MODELS = [name for name, entry in MODELS.items() if "segmentation" in entry.tasks]
SIDE = 32  # the smallest side every dense net here takes (4 poolings, instance norm needs > 1 voxel)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_model_names_are_checked_against_the_registry_not_a_schema_enum():
    # a new registry entry needs no schema edit
    models = yaml.safe_load(SCHEMA.read_text())["$defs"]["settings"]["properties"]["models"]
    assert "enum" not in models["items"]


def test_every_entry_names_known_tasks_and_dims():
    for name, entry in MODELS.items():
        assert entry.tasks and set(entry.tasks) <= set(CLASSIFICATION + DENSE), name
        assert entry.spatial_dims and set(entry.spatial_dims) <= {2, 3}, name
        assert entry.description, name


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_shapes_channels_and_head_only_dropout(name):
    for channels in (1, 3, 4):
        model = build_model(
            ModelSpec(name, "classification", channels, 5, dropout=0.3, image_size=(SIDE, SIDE))
        )
        model.eval()
        with torch.no_grad():
            assert model(torch.randn(2, channels, SIDE, SIDE)).shape == (2, 5)
    assert isinstance(model, Classifier)
    # MC dropout samples only the head: any dropout left in the backbone must be switched off (p=0)
    assert [m.p for m in dropout_modules(model.head)] == [0.3]
    assert all(m.p == 0 for m in dropout_modules(model.features))


def test_vit_takes_other_image_sizes_than_it_was_built_for():
    model = build_model(ModelSpec("vit_tiny", "classification", 3, 2, image_size=(32, 32))).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 40)).shape == (1, 2)  # interpolated position embeddings
        assert model(torch.randn(1, 3, 30, 30)).shape == (1, 2)  # padded to the patch grid


@pytest.mark.parametrize("name", DENSE_MODELS)
def test_dense_model_shapes_2d_and_3d(name):
    for channels in (1, 3, 4):
        model = build_model(ModelSpec(name, "segmentation", channels, 3)).eval()
        with torch.no_grad():
            assert model(torch.randn(2, channels, SIDE, SIDE)).shape == (2, 3, SIDE, SIDE)
    assert dropout_modules(model), "segmentation MC dropout needs dropout layers in the network"
    for task, out_channels in (("regression", 1), ("instance_segmentation", 2)):
        model = build_model(ModelSpec(name, task, 1, out_channels)).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 1, SIDE, SIDE)).shape == (1, out_channels, SIDE, SIDE)
    if 3 in MODELS[name].spatial_dims:
        model = build_model(ModelSpec(name, "segmentation", 2, 2, spatial_dims=3)).eval()
        with torch.no_grad():
            assert model(torch.randn(1, 2, SIDE, SIDE, SIDE)).shape == (1, 2, SIDE, SIDE, SIDE)


def test_build_model_names_the_alternatives():
    with pytest.raises(ValueError, match=r"unknown model 'resnet5'; models for classification: \['resnet50'"):
        build_model(ModelSpec("resnet5", "classification", 3, 2))
    with pytest.raises(ValueError, match="models for segmentation"):
        build_model(ModelSpec("mobilenet_v2", "segmentation", 3, 2))
    with pytest.raises(ValueError, match="2D only"):
        build_model(ModelSpec("densenet121", "classification", 3, 2, spatial_dims=3))


@pytest.mark.parametrize("name", ["mobilenet_v2", "densenet121"])
def test_load_pretrained_adapts_first_conv_to_other_channels(name, tmp_path):
    import torchvision.models

    # A torchvision checkpoint (RGB, 1000 classes, torchvision's layer names) into a 1-channel, 4-class model.
    reference = getattr(torchvision.models, name)(weights=None)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)
    model = build_model(ModelSpec(name, "classification", 1, 4))
    loaded, skipped = load_pretrained(model, path)

    first_conv = {"mobilenet_v2": "features.0.0.weight", "densenet121": "features.conv0.weight"}[name]
    rgb = reference.state_dict()[first_conv]
    adapted = model.state_dict()[f"features.{first_conv}"]
    assert adapted.shape[1] == 1
    # kernels averaged over the input channels, scaled to keep the response to a grey image
    torch.testing.assert_close(adapted, rgb.mean(dim=1, keepdim=True) * 3)
    assert any("input channels adapted 3->1" in name for name in loaded)
    assert all(not s.startswith(first_conv) for s in skipped)
    # the 1000-class layer does not fit 4 classes; it is the only kind of tensor skipped
    assert skipped and all("head" not in s and ("classifier" in s) for s in skipped)


def test_segresnet_is_monais_with_its_dropout_moved_to_the_last_decoder_stage():
    from monai.networks.nets import SegResNet

    for dims in (2, 3):
        ours = build_model(ModelSpec("segresnet", "segmentation", 1, 2, spatial_dims=dims, dropout=0.3)).eval()
        monai = SegResNet(spatial_dims=dims, in_channels=1, out_channels=2, init_filters=16, dropout_prob=0.3).eval()
        monai.load_state_dict(ours.state_dict())  # same weights under the same names: checkpoints carry over
        x = torch.randn(1, 1, *[16] * dims)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), monai(x))
        assert [m.p for m in dropout_modules(ours)] == [ours.head_dropout.p] == [0.3]


def test_head_sampling_draws_each_sample_from_one_trunk_pass():
    from snakescope.engine.inference import predict_logits, sample_dropout

    model = build_model(ModelSpec("segresnet", "segmentation", 1, 2, dropout=0.5))
    images = torch.randn(2, 1, SIDE, SIDE)
    torch.manual_seed(1)
    sampled = sample_dropout(model, images, {"patch_size": None}, 3, 16)
    # the same dropout masks drawn by hand, in the same order: the trunk once, the head three times
    trunk, head = model.sampling_split()
    model.eval()
    model.head_dropout.train()
    torch.manual_seed(1)
    with torch.no_grad():
        features = trunk(images)
        expected = torch.stack([head(features) for _ in range(3)])
    model.eval()
    assert sampled.shape == (3, 2, 2, SIDE, SIDE)
    torch.testing.assert_close(sampled, expected)
    assert not torch.equal(sampled[0], sampled[1])
    # through a sliding window, with dropout off, every sample is the window's prediction
    model.head_dropout.p = 0.0
    plan = {"patch_size": [16, 16]}
    windowed = sample_dropout(model, images, plan, 4, 3, activation=lambda logits: logits.softmax(1))
    with torch.no_grad():
        prediction = predict_logits(model.eval(), images, plan).softmax(1)
    assert windowed.shape == (4, 2, 2, SIDE, SIDE)
    for sample in windowed:
        torch.testing.assert_close(sample, prediction)
