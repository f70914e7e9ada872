"""--init-from: a torchvision-built model's state dict and a best_model.pt start the backbone."""
import pytest
import torch
import torchvision

from lt_dist.engine.checkpoint import save_best_model
from lt_dist.engine.init_from import load_backbone
from lt_dist.errors import UserInputError
from lt_dist.models.resnet import build_model


def test_a_torchvision_state_dict_fills_the_backbone_and_skips_fc(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=7)  # 7 classes: its fc cannot fit a 4-class model
    path = tmp_path / "resnet18.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)  # DataParallel-style keys
    model = build_model("resnet18", 4)
    fc_before = model.fc.weight.detach().clone()
    lines = []
    skipped = load_backbone(model.backbone, str(path), lines.append)
    assert skipped == ["fc.bias", "fc.weight"] and "fc.weight" in lines[0]
    for name, value in source.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(model.backbone.state_dict()[name], value), name
    assert torch.equal(model.fc.weight, fc_before)
    images = torch.randn(2, 3, 64, 64)
    source.eval(), model.eval()
    source.fc = torch.nn.Identity()
    assert torch.allclose(model.features(images), source(images), atol=1e-5)  # the same features


def test_a_best_model_file_is_accepted(tmp_path):
    first = build_model("resnet10", 5, small_input=True)
    save_best_model(str(tmp_path), first, {"arch": "resnet10"})
    second = build_model("resnet10", 3, small_input=True)
    load_backbone(second.backbone, str(tmp_path / "best_model.pt"), lambda line: None)
    for name, value in first.backbone.state_dict().items():
        assert torch.equal(second.backbone.state_dict()[name], value), name


@pytest.mark.parametrize("arch,small_input,message", [("resnet10", False, "missing"),
                                                       ("resnet18", True, "has shape")])
def test_a_file_of_another_arch_is_refused_naming_a_tensor(tmp_path, arch, small_input, message):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(UserInputError, match=message):
        load_backbone(build_model(arch, 4, small_input=small_input).backbone, str(path))
