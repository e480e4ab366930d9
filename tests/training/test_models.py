"""Models: registry, output contract, config record, training steps, local pretrained weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from breastdx.errors import BreastdxError
from training.models import (
    MODELS,
    BreastdxModel,
    ModelConfigError,
    OnnxExportWrapper,
    PretrainedWeightsError,
    build_model,
    build_model_from_config,
    load_pretrained,
)
from training.registry import DuplicateNameError, Registry, UnknownNameError

SEGMENTATION = ["unet", "resunetpp", "deeplabv3", "deeplabv3_mobilenet"]
CLASSIFICATION = ["vgg19", "resnet18", "resnet50", "densenet121", "efficientnet_v2_s"]
TINY_WIDTH = {"unet": 8, "resunetpp": 8}  # the torchvision-based models have fixed widths


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _tiny(name: str, in_channels: int = 1, **kwargs: Any) -> BreastdxModel:
    return build_model(
        name, in_channels=in_channels, width=TINY_WIDTH.get(name), input_size=64, **kwargs
    )


def test_registry_holds_every_model() -> None:
    # Other tests may register test-only networks (tests/training/tiny_runs.py): a superset.
    assert set(SEGMENTATION + CLASSIFICATION) <= set(MODELS.names())


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_model("unett")
    message = str(info.value)
    assert "did you mean 'unet'" in message
    assert all(name in message for name in SEGMENTATION + CLASSIFICATION)
    assert isinstance(info.value, KeyError) and isinstance(info.value, BreastdxError)
    assert info.value.to_dict()["code"] == "unknown_name"


def test_generic_registry() -> None:
    things: Registry[int] = Registry("thing")
    things.register("one")(1)
    assert things.get("one") == 1 and "one" in things and things.names() == ("one",)
    with pytest.raises(DuplicateNameError):
        things.register("one")(2)
    with pytest.raises(KeyError, match="valid thing names: one"):
        things.get("two")


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", SEGMENTATION)
def test_segmentation_output_contract(name: str, in_channels: int) -> None:
    model = _tiny(name, in_channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 64, 64))
    assert set(out) == {"mask_logits", "malignancy_logit"}
    assert out["mask_logits"].shape == (2, 1, 64, 64)
    assert out["malignancy_logit"].shape == (2, 1)
    assert model.config.name == name and model.config.in_channels == in_channels
    assert model.config.num_classes == 1 and model.config.input_size == 64
    assert model.output_names == ("mask_logits", "malignancy_logit")


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", CLASSIFICATION)
def test_classification_output_contract(name: str, in_channels: int) -> None:
    model = build_model(name, in_channels=in_channels, input_size=64, width=32).eval()
    with torch.no_grad():
        out = model(torch.randn(2, in_channels, 64, 64))
    assert set(out) == {"class_logits"}
    assert out["class_logits"].shape == (2, 2)
    assert model.config.width is None  # fixed torchvision widths: the width asked for is ignored


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_small_stem_keeps_twice_the_resolution_for_the_first_block(name: str) -> None:
    sizes: dict[str, tuple[int, ...]] = {}
    for stem in ("imagenet", "small"):
        model = build_model(name, in_channels=3, input_size=50, stem=stem).eval()
        model.net.layer1.register_forward_hook(
            lambda _m, _i, out, stem=stem: sizes.__setitem__(stem, tuple(out.shape[-2:]))
        )
        with torch.no_grad():
            out = model(torch.randn(2, 3, 50, 50))
        assert out["class_logits"].shape == (2, 2)
        assert model.config.options == {"stem": stem}
        rebuilt = build_model_from_config(model.config.to_dict())
        assert rebuilt.config == model.config
    assert sizes == {"imagenet": (13, 13), "small": (25, 25)}  # 50 px: /4 against /2
    with pytest.raises(ModelConfigError, match="stem must be one of imagenet, small"):
        build_model(name, in_channels=3, input_size=50, stem="cifar")


def _loss(out: dict[str, torch.Tensor], mask: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    if "class_logits" in out:
        return F.cross_entropy(out["class_logits"], label)
    malignancy = F.binary_cross_entropy_with_logits(out["malignancy_logit"][:, 0], label.float())
    return F.binary_cross_entropy_with_logits(out["mask_logits"], mask) + malignancy


# The joint models written here, the DeepLab wrapper (its ResNet-50 variant differs only in the
# torchvision backbone) and one stock torchvision classifier; the others' forward is tested above.
@pytest.mark.parametrize("name", ["unet", "resunetpp", "deeplabv3_mobilenet", "densenet121"])
def test_optimiser_steps_reduce_loss_on_a_fixed_batch(name: str) -> None:
    model = _tiny(name).train()
    for module in model.modules():  # dropout off so that the loss is comparable between steps
        if isinstance(module, nn.Dropout):
            module.eval()
    x = torch.randn(2, 1, 64, 64)
    mask = torch.zeros(2, 1, 64, 64)
    mask[:, :, 16:40, 20:44] = 1.0
    label = torch.tensor([0, 1])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = _loss(model(x), mask, label)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_unet_depth_and_input_size_rules() -> None:
    model = build_model("unet", width=4, input_size=32, depth=2)
    assert model.config.options["depth"] == 2 and len(model.down) == 2
    with pytest.raises(ModelConfigError, match="multiple of 16"):
        build_model("unet", width=4, input_size=40)
    with pytest.raises(ModelConfigError, match="unknown option"):
        build_model("unet", width=4, input_size=32, depht=2)
    with pytest.raises(ModelConfigError, match="one foreground class"):
        build_model("unet", width=4, input_size=32, num_classes=3)
    assert build_model("unet", width=4, input_size=32, num_classes=2).config.num_classes == 1


def test_onnx_wrapper_returns_outputs_in_documented_order() -> None:
    model = _tiny("unet").eval()
    wrapper = OnnxExportWrapper(model)
    x = torch.randn(1, 1, 64, 64)
    with torch.no_grad():
        mask, malignancy = wrapper(x)
        expected = model(x)
    assert wrapper.output_names == ("mask_logits", "malignancy_logit")
    assert torch.equal(mask, expected["mask_logits"])
    assert torch.equal(malignancy, expected["malignancy_logit"])


def test_config_round_trip_rebuilds_the_same_architecture() -> None:
    model = build_model("unet", width=4, input_size=32, depth=3, head_dropout=0.1)
    again = build_model_from_config(model.config.to_dict())
    assert again.config == model.config
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]


def test_pretrained_round_trip(tmp_path: Path) -> None:
    model = _tiny("resunetpp").eval()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = _tiny("resunetpp", pretrained=path).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_torchvision_imagenet_state_dict_loads_into_a_grey_classifier(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    reference = resnet50(weights=None)  # stands in for ImageNet weights saved by the user
    path = tmp_path / "resnet50_imagenet.pt"
    torch.save(reference.state_dict(), path)
    model = build_model("resnet50", in_channels=1, input_size=64)
    report = load_pretrained(model, path)
    assert report.prefix == "net."
    assert report.adapted == ("conv1.weight",) and set(report.skipped) == {"fc.weight", "fc.bias"}
    summed = reference.conv1.weight.sum(dim=1, keepdim=True)
    assert torch.allclose(model.net.conv1.weight, summed)
    assert torch.equal(model.net.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)


def test_resnet50_state_dict_loads_into_the_deeplab_backbone(tmp_path: Path) -> None:
    from torchvision.models import resnet50

    path = tmp_path / "resnet50.pt"
    torch.save(resnet50(weights=None).state_dict(), path)
    report = load_pretrained(build_model("deeplabv3", in_channels=3, input_size=64), path)
    assert report.prefix == "net.backbone."
    assert set(report.unexpected) == {"fc.weight", "fc.bias"}
    assert any(key.startswith("malignancy_head") for key in report.missing)


def test_pretrained_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PretrainedWeightsError, match="does not exist"):
        _tiny("unet", pretrained=tmp_path / "absent.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"something.else": torch.zeros(3)}, foreign)
    with pytest.raises(PretrainedWeightsError, match="fit model 'unet'"):
        _tiny("unet", pretrained=foreign)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="not a readable"):
        _tiny("unet", pretrained=garbage)
