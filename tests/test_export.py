"""The model as a product, end to end on a tiny run: the search saves each chosen head,
`lt_dist export` packages backbone + head (torch, TorchScript, ONNX), `lt_dist evaluate`
reproduces the search's test numbers and `lt_dist predict` labels image files."""
import csv
import json

import numpy as np
import pytest
import torch

from conftest import make_image_folder, run_cli
from lt_dist.data.presets import get_preset
from lt_dist.data.tvdecode import decode_sample
from lt_dist.engine.checkpoint import save_best_model
from lt_dist.models import load_model
from lt_dist.models.resnet import build_model
from lt_dist.report.results import write_results
from lt_dist.stage2.methods import fit_method
from lt_dist.stage2.saved import saved_methods
from lt_dist.stage2.search import run_trial
from lt_dist.stage2.store import load_features
from lt_dist.stage2.types import FeatureSplit, StageOneClassifier

TRIALS = [("joint", {}), ("ncm", {"metric": "l2"}), ("ncm", {"metric": "cos"}), ("tau_norm", {"tau": 0.0}),
          ("tau_norm", {"tau": 1.0}), ("lws", {"epochs": 3}), ("crt", {"epochs": 3}),
          ("learned_tau", {"epochs": 2}), ("cosine", {"epochs": 2}), ("logit_adjust", {"tau": 1.0}),
          ("disalign", {"epochs": 2})]
NAMES = ["shirt", "bag", "boot"]
ONNX_ATOL = 1e-4  # ONNX Runtime vs torch on the CPU: different conv kernels, logits of size ~1
SCRIPT_ATOL = 1e-5  # TorchScript runs torch's own kernels


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Packed train/val/test (train counts many/medium/few), a seeded ResNet-10 best_model.pt,
    extracted features and a search's results/ written by the same code as the Ray search."""
    root = tmp_path_factory.mktemp("export")
    from lt_dist.cli import main

    train = make_image_folder(root / "train_images", [110, 30, 5], size=(20, 20))
    test = make_image_folder(root / "test_images", [6, 6, 6], seed=1, size=(20, 20))
    assert main(["pack", str(train), "--out", str(root / "ds"), "--val-per-class", "2", "--no-progress",
                 "--class-names", ",".join(NAMES)]) == 0
    assert main(["pack", str(test), "--out", str(root / "ds"), "--split", "test", "--no-progress",
                 "--class-names", ",".join(NAMES)]) == 0
    torch.manual_seed(0)
    model = build_model("resnet10", 3, small_input=True)
    (root / "run").mkdir()
    save_best_model(str(root / "run"), model, {"arch": "resnet10", "num_classes": 3, "small_input": True,
                                               "epoch": 0, "train_counts": [108, 28, 3], "class_names": NAMES,
                                               "eval_preset": "small_eval", "image_size": 16})
    assert main(["extract", "--ckpt", str(root / "run"), "--data", str(root / "ds"), "--out", str(root / "f"),
                 "--decoder", "torchvision", "--workers", "0"]) == 0
    results = [run_trial(str(root / "f"), method, params, 0, "val") for method, params in TRIALS]
    (root / "results").mkdir()
    write_results(str(root / "results"), str(root / "f"), results, 0, "val")
    return root


def export(tiny, method, capsys, *formats):
    out = tiny / f"model_{method}"
    args = ["export", "--run", tiny / "run", "--results", tiny / "results", "--method", method, "--out", out]
    status, _, err = run_cli(args + [a for f in formats for a in ("--format", f)], capsys)
    assert status == 0, err
    return out


def stage2_test_logits(tiny, method):
    """The stage-2 predictor of the chosen setting, refitted, on the stored test features."""
    splits, stored = load_features(str(tiny / "f"))
    params = json.loads((tiny / "results" / "heads" / f"{method}.json").read_text())["params"]
    predictor = fit_method(method, FeatureSplit(splits["train"].features, splits["train"].labels),
                           StageOneClassifier(stored["weight"], stored["bias"], stored["train_counts"]), params, 0)
    return predictor(splits["test"].features)


def decoded_test_images(tiny):
    """(N, 3, 16, 16) test images in manifest order, decoded independently of the model code."""
    from lt_dist.data.reader import ShardReader

    reader = ShardReader(str(tiny / "ds" / "test"))
    preset = get_preset("small_eval", size=16)
    return torch.stack([decode_sample(reader.read(row), preset, torch.Generator()) for row in range(18)])


def test_the_search_saves_every_chosen_head(tiny):
    best = json.loads((tiny / "results" / "best.json").read_text())
    assert saved_methods(str(tiny / "results")) == sorted(best)
    for method, result in best.items():
        record = json.loads((tiny / "results" / "heads" / f"{method}.json").read_text())
        assert record["params"] == json.loads(result["params"])
        assert record["scores"]["test_all"] == result["test_all"]
        assert record["ckpt"] == str(tiny / "run") and record["class_names"] == NAMES


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
@pytest.mark.parametrize("method", ["lws", "ncm", "logit_adjust", "disalign"])  # plain, float64, shifted, gated heads
def test_exported_formats_match_torch_and_the_stage2_logits(tiny, method, capsys):
    import onnxruntime

    out = export(tiny, method, capsys, "torchscript", "onnx")
    model = load_model(str(out))
    images = decoded_test_images(tiny)
    with torch.no_grad():
        logits = model(images).numpy()
    # backbone + head on the images = the stage-2 predictor on the features extract stored
    assert np.allclose(logits, stage2_test_logits(tiny, method), atol=1e-4, rtol=0)
    assert model.config["class_names"] == NAMES and model.config["preset"]["crop_size"] == 16
    scripted = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        assert np.allclose(scripted(images).numpy(), logits, atol=SCRIPT_ATOL, rtol=0)
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (images[:5], images[5:8]):  # the batch axis is dynamic
        onnx_logits = session.run(["logits"], {"images": batch.numpy()})[0]
        with torch.no_grad():
            assert np.allclose(onnx_logits, model(batch).numpy(), atol=ONNX_ATOL, rtol=0)
    assert json.loads((out / "config.json").read_text())["method"] == method


@pytest.mark.parametrize("method", ["joint", "tau_norm", "lws", "ncm"])
def test_evaluate_reproduces_the_search_test_numbers(tiny, method, capsys):
    out = export(tiny, method, capsys)
    status, stdout, err = run_cli(["evaluate", out, "--data", tiny / "ds", "--split", "test",
                                   "--decoder", "torchvision", "--workers", "0"], capsys)
    assert status == 0, err
    scores = json.loads((out / "per_class_test.json").read_text())
    best = json.loads((tiny / "results" / "best.json").read_text())[method]
    for group in ("many", "medium", "few", "all"):
        assert scores[group] == pytest.approx(best[f"test_{group}"], abs=1e-9), group
    assert method in stdout and f"{scores['all']:.2f}" in stdout
    with open(out / "per_class_test.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class_name"] for r in rows] == NAMES and [r["group"] for r in rows] == ["many", "medium", "few"]
    with open(tiny / "results" / "per_class.csv") as handle:
        search_rows = [r for r in csv.DictReader(handle) if r["method"] == method]
    assert [r["accuracy"] for r in rows] == [r["test_accuracy"] for r in search_rows]


def test_predict_writes_top_k_names_and_skips_bad_images(tiny, capsys, tmp_path):
    out = export(tiny, "crt", capsys)
    folder = tmp_path / "photos"
    folder.mkdir()
    sources = sorted((tiny / "test_images").rglob("*.jpg"))[::5]
    for index, source in enumerate(sources):
        (folder / f"p{index}.jpg").write_bytes(source.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{sources[0]}\n{tmp_path / 'missing.jpg'}\n")
    status, _, err = run_cli(["predict", out, "--folder", folder, "--list", listed, "--top-k", "2",
                              "--out", tmp_path / "preds.csv", "--batch-size", "2"], capsys)
    dali_status, _, dali_err = run_cli(["predict", out, "--folder", folder, "--list", listed, "--top-k", "2",
                                        "--out", tmp_path / "dali.csv", "--batch-size", "2", "--decoder", "dali"],
                                       capsys)
    assert status == 0, err
    assert "broken.jpg" in err and "missing.jpg" in err
    with open(tmp_path / "preds.csv") as handle:
        rows = list(csv.DictReader(handle))
    expected_paths = [str(folder / f"p{i}.jpg") for i in range(len(sources))] + [str(sources[0])]
    assert [r["path"] for r in rows] == expected_paths
    model = load_model(str(out))
    preset = get_preset("small_eval", size=16)
    images = torch.stack([decode_sample(open(p, "rb").read(), preset, torch.Generator()) for p in expected_paths])
    with torch.no_grad():
        logits = model(images).double().numpy()
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :2]
    for row, top, p in zip(rows, order, probs):
        assert [row["class_1"], row["class_2"]] == [NAMES[i] for i in top]
        assert float(row["prob_1"]) == pytest.approx(p[top[0]], abs=1e-6)
    # DALI: the same files kept and skipped (a bad image in a batch is found by decoding it alone);
    # its resize is not PIL's, so probabilities agree only roughly
    assert dali_status == 0, dali_err
    assert "broken.jpg" in dali_err and "missing.jpg" in dali_err
    with open(tmp_path / "dali.csv") as handle:
        dali_rows = list(csv.DictReader(handle))
    assert [r["path"] for r in dali_rows] == expected_paths
    for row, p in zip(dali_rows, probs):
        assert float(row["prob_1"]) >= float(row["prob_2"])
        assert float(row["prob_1"]) == pytest.approx(p[NAMES.index(row["class_1"])], abs=0.05)


def test_bad_input_exits_2_naming_the_value(tiny, capsys, tmp_path):
    status, _, err = run_cli(["export", "--run", tiny / "run", "--results", tiny / "results", "--method", "svm",
                              "--out", tmp_path / "m"], capsys)
    assert status == 2 and "no saved 'svm' head; saved: cosine, crt" in err
    status, _, err = run_cli(["evaluate", tmp_path, "--data", tiny / "ds"], capsys)
    assert status == 2 and "is not an exported lt-dist model" in err
    other = tmp_path / "other"
    other.mkdir()
    save_best_model(str(other), build_model("resnet10", 4, small_input=True),
                    {"arch": "resnet10", "num_classes": 4, "small_input": True, "train_counts": [1] * 4,
                     "class_names": list("abcd")})
    status, _, err = run_cli(["export", "--run", other, "--results", tiny / "results", "--method", "lws",
                              "--out", tmp_path / "m"], capsys)
    assert status == 2 and "the lws head is 3 classes x 512 features but" in err
    joint = export(tiny, "joint", capsys)
    status, _, err = run_cli(["predict", joint], capsys)
    assert status == 2 and "no images" in err
    status, _, err = run_cli(["predict", joint, "x.jpg", "--out", tmp_path / "nowhere" / "p.csv"], capsys)
    assert status == 2 and "does not exist" in err and "nowhere" in err


def test_load_model_needs_no_training_stack(tiny, capsys):
    """A fresh interpreter loads and runs the exported model without stage 2, DeepSpeed, DALI or Ray."""
    import subprocess
    import sys

    from conftest import REPO

    out = export(tiny, "tau_norm", capsys)
    code = ("import sys, torch; from lt_dist.models import load_model; m = load_model(sys.argv[1]); "
            "print(tuple(m(torch.zeros(2, 3, 16, 16)).shape)); "
            "print(sorted(n for n in ('deepspeed', 'ray', 'nvidia.dali', 'lt_dist.stage2', 'lt_dist.engine') "
            "if n in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[:2] == ["(2, 3)", "[]"]


def test_report_lists_the_model_files_and_their_export_commands(tiny, capsys):
    import html

    status, _, err = run_cli(["report", tiny / "results"], capsys)
    assert status == 0, err
    page = html.unescape((tiny / "results" / "report.html").read_text())
    assert "<h2>Model files</h2>" in page
    for method in saved_methods(str(tiny / "results")):
        assert f"heads/{method}.safetensors" in page
        assert (f"lt_dist export --run {tiny / 'run'} --results {tiny / 'results'} --method {method} "
                f"--out model/{method} --format onnx") in page


@pytest.mark.slow
def test_the_papers_backbone_exports_to_onnx(tmp_path):
    """ResNeXt-152 32x4d at 224 px (60 M parameters) with an LWS-style head: ONNX Runtime matches torch."""
    import onnxruntime

    from lt_dist.engine.export import export_model, example_input
    from lt_dist.models.heads import build_head
    from lt_dist.models.package import FORMAT, VERSION, PackagedModel, build_backbone

    torch.manual_seed(0)
    backbone = build_backbone("resnext152_32x4d", 10, small_input=False)
    head = build_head("lws", {"weight": 0.01 * torch.randn(10, 2048), "bias": torch.zeros(10)})
    config = {"format": FORMAT, "version": VERSION, "arch": "resnext152_32x4d", "small_input": False,
              "num_classes": 10, "method": "lws", "preset": {"crop_size": 224}}
    model = PackagedModel(backbone, head, config).eval()
    path = export_model(model, str(tmp_path), "onnx")
    images = example_input(config, batch=3)
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    assert np.allclose(session.run(["logits"], {"images": images.numpy()})[0], expected, atol=ONNX_ATOL, rtol=0)
