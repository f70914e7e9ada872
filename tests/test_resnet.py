import pytest
import torch

from lt_dist.models.resnet import MODELS, build_model, count_parameters


def test_resnext152_has_about_60m_parameters():
    model = build_model("resnext152_32x4d", num_classes=1000)
    assert count_parameters(model) == 59_951_400  # docs/METHOD.md: torchvision ResNet(Bottleneck, [3,8,36,3], 32, 4)
    assert model.feature_dim == 2048


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_every_arch_builds_and_runs(arch):
    model = build_model(arch, num_classes=7, small_input=True).eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
        features = model.features(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 7) and features.shape == (2, model.feature_dim)


def test_small_input_keeps_resolution():
    big, small = build_model("resnet10", 10), build_model("resnet10", 10, small_input=True)
    assert big.backbone.conv1.stride == (2, 2) and small.backbone.conv1.stride == (1, 1)
    assert isinstance(small.backbone.maxpool, torch.nn.Identity)


def test_unknown_arch_is_named():
    with pytest.raises(ValueError, match="unknown arch 'resnet9000'"):
        build_model("resnet9000", 10)
