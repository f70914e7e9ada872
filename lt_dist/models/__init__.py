"""Backbones by name (resnet.py) and classifier heads (heads.py)."""
