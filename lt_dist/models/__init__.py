"""Backbones by name (resnet.py), stage-2 heads as modules (heads.py), packaged models (package.py)."""
from lt_dist.models.package import load_model

__all__ = ["load_model"]
