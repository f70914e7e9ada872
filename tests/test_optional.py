"""Optional packages: a feature whose package is missing stops with one line and exit 2.

A package is made missing the way Python itself spells it: sys.modules[name] = None
makes `import name` fail and importlib.util.find_spec(name) return None.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO
from lt_dist.engine.logs import RunLogger
from lt_dist.errors import UserInputError
from lt_dist.optional import default_decoder, installed, require


def run_without(modules: list[str], code: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter in which `modules` cannot be imported."""
    hide = "".join(f"sys.modules[{name!r}] = None; " for name in modules)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", f"import sys; {hide}{code}"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_installed_reads_dotted_names_without_importing():
    assert installed("json") and installed("email.mime")
    assert not installed("json.not_a_module") and not installed("not_a_package.sub")


def test_require_names_the_package_and_the_extra():
    require("json", "anything")  # installed: nothing happens
    with pytest.raises(UserInputError, match=r"^the search needs the Python package not_a_package, which is not"):
        require("not_a_package", "the search")


@pytest.mark.parametrize("missing, argv, names", [
    (["deepspeed"], "launch/train_repr.py --data shards/x --out runs/x", "deepspeed"),
    (["nvidia.dali"], "launch/train_repr.py --data shards/x --out runs/x --decoder dali", "nvidia-dali"),
    (["nvidia.dali"], "-m lt_dist.cli extract --ckpt runs/x --data shards/x --out f/x --decoder dali", "nvidia-dali"),
    (["ray"], "tune/search_stage2.py --features features/x", "ray[tune]"),
    (["nvidia.dali"], "-m lt_dist.cli evaluate models/x --data shards/x --decoder dali", "nvidia-dali"),
    (["nvidia.dali"], "-m lt_dist.cli predict models/x a.jpg --decoder dali", "nvidia-dali"),
])
def test_a_missing_package_is_one_line_and_exit_2(missing, argv, names):
    args = argv.split()
    if args[0] == "-m":
        code = f"from lt_dist.cli import main; sys.exit(main({args[2:]!r}))"
    else:
        code = f"sys.argv = {args!r}; import runpy; runpy.run_path({args[0]!r}, run_name='__main__')"
    result = run_without(missing, code)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and names in lines[0] and "not installed" in lines[0], result.stderr


def test_default_decoder_is_dali_only_where_dali_is_installed():
    result = run_without(["nvidia.dali"], "from lt_dist.optional import default_decoder; print(default_decoder())")
    assert result.stdout.strip() == "torchvision"
    assert default_decoder() == ("dali" if installed("nvidia.dali") else "torchvision")


def test_run_logger_without_tensorboard_writes_the_json_log_only(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    logger = RunLogger(str(tmp_path), enabled=True)
    logger.log("train", 1, loss=0.5)
    logger.close()
    assert "tensorboard is not installed" in capsys.readouterr().out
    assert '"loss": 0.5' in (tmp_path / "log.jsonl").read_text() and not (tmp_path / "tb").exists()
