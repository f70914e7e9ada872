import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.parametrize("command", ["pack", "stats", "verify"])
def test_every_subcommand_explains_itself(command):
    result = subprocess.run([sys.executable, "-m", "lt_dist.cli", command, "--help"],
                            cwd=REPO, capture_output=True, text=True, check=True)
    assert "usage: lt_dist " + command in result.stdout


def test_import_has_no_side_effects():
    code = ("import os; before = dict(os.environ); import lt_dist.cli, lt_dist.shards.pack, "
            "lt_dist.shards.verify, lt_dist.shards.stats; print(before == dict(os.environ))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"
