"""The light name tables equal the real ones; checks and defaults say what they should."""
import inspect
import subprocess
import sys

import pytest

from conftest import REPO
from lt_dist.choices import ARCHS, LOSS_PARAMS, check_loss_params, check_names, default_workers, loss_help
from lt_dist.losses import LOSSES
from lt_dist.models.resnet import MODELS


def test_tables_equal_the_real_constructors():
    assert ARCHS == tuple(MODELS)
    assert tuple(LOSS_PARAMS) == tuple(LOSSES)
    for name, cls in LOSSES.items():
        params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, samples_per_class
        assert {p.name: p.default for p in params} == LOSS_PARAMS[name], name


def test_loss_param_mistakes_are_one_line_naming_loss_and_parameters():
    check_loss_params("focal", {"gamma": 1.0})
    with pytest.raises(ValueError) as error:
        check_loss_params("focal", {"gama": 1.0})
    assert str(error.value) == "loss 'focal' has no parameter 'gama'; it takes gamma (default 2.0)"
    with pytest.raises(ValueError, match="loss 'ce' has no parameter 'tau'; it takes no parameters"):
        check_loss_params("ce", {"tau": 1.0})
    assert "ldam            max_margin=0.5, scale=30.0, drw=True, drw_start=0.8, beta=0.9999" in loss_help()


@pytest.mark.parametrize("kwargs, message", [
    (dict(arch="resnet19"), "unknown arch 'resnet19'"),
    (dict(loss="fcoal"), "unknown loss 'fcoal'"),
    (dict(sampler="sqrtt"), "unknown sampler 'sqrtt'"),
    (dict(presets=("imagenet_train", "tiny")), "unknown preset 'tiny'"),
])
def test_check_names_names_the_bad_value(kwargs, message):
    values = dict(arch="resnet10", loss="ce", loss_params={}, sampler="instance", presets=("small_eval",))
    with pytest.raises(ValueError, match=message):
        check_names(**{**values, **kwargs})


def test_checking_names_imports_neither_torch_nor_deepspeed():
    code = ("import sys; from lt_dist.choices import check_names; "
            "check_names('resnet10', 'focal', {}, 'sqrt', ('small_train',)); "
            "print(sorted(m for m in ('torch', 'deepspeed', 'ray') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "[]", result.stderr


def test_default_workers_follow_decoder_and_machine():
    assert default_workers("dali", 64, 1)[0] == 0
    assert default_workers("torchvision", 16, 2) == (7, "torchvision decoding, 16 CPUs shared by 2 rank(s) on this node")
    assert default_workers("torchvision", 2, 1)[0] == 1
    assert default_workers("torchvision", 1, 4)[0] == 0
    assert default_workers("torchvision", 128, 1)[0] == 8
