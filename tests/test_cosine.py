"""models.cosine.CosineHead against cosines computed by hand, and build_model's head choice."""
import numpy as np
import pytest
import torch

from lt_dist.models.cosine import CosineHead
from lt_dist.models.resnet import build_model


def test_logits_are_scaled_cosines_without_bias():
    torch.manual_seed(1)
    head = CosineHead(4, 3, scale=16.0, learn_scale=True)
    features = torch.randn(5, 4) * 7.0
    x, w = features.double().numpy(), head.weight.detach().double().numpy()
    expected = 16.0 * (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    assert np.allclose(head(features).detach().double().numpy(), expected, atol=1e-5)
    assert head.bias is None and isinstance(head.scale, torch.nn.Parameter)
    assert torch.allclose(head(features * 3.0), head(features), atol=1e-5)  # feature norm does not matter


def test_fixed_scale_is_a_buffer_and_bad_scale_is_refused():
    head = CosineHead(4, 3, scale=1.0)
    assert "scale" in dict(head.named_buffers()) and not list(n for n, _ in head.named_parameters() if n == "scale")
    with pytest.raises(ValueError, match="scale must be > 0"):
        CosineHead(4, 3, scale=0.0)


def test_build_model_heads_round_trip_through_a_state_dict():
    model = build_model("resnet10", 4, True, "cosine", 1.0)
    again = build_model("resnet10", 4, True, "cosine", 1.0)
    again.load_state_dict(model.state_dict())
    images = torch.randn(2, 3, 16, 16)
    model.eval(), again.eval()
    assert torch.equal(model(images), again(images)) and model(images).abs().max() <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="unknown head"):
        build_model("resnet10", 4, True, "mlp")
