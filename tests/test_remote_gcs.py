"""gs:// datasets end to end against gcp-storage-emulator (a GCS JSON-API server) on
127.0.0.1: pack to gs://, verify it, one loader epoch that yields what the local pack
yields, a missing bucket / split / shard named by its URL, and GCS's 401 / 403 read as
"access denied" at the first answer (a stub answering as GCS does)."""
import http.server
import json
import logging
import threading

import pytest

pytest.importorskip("gcsfs", reason="gs:// needs gcsfs: pip install 'lt-dist[remote]'")
pytest.importorskip("gcp_storage_emulator", reason="the gs:// tests run against gcp-storage-emulator: "
                    "pip install gcp-storage-emulator (in the test extras)")

from conftest import make_image_folder  # noqa: E402
from lt_dist.cli import main  # noqa: E402
from lt_dist.data.loader import BalancedLoader, LoaderConfig  # noqa: E402
from lt_dist.data.sampler import SamplerConfig  # noqa: E402
from lt_dist.dist import World  # noqa: E402
from lt_dist.shards.manifest import resolve_split  # noqa: E402
from lt_dist.storage.remote import RemoteStore  # noqa: E402
from lt_dist.storage.settings import StorageSettings  # noqa: E402
from servers import GcsEmulator  # noqa: E402

COUNTS = [6, 4, 3, 2]  # --shard-count 2: 3 + 2 + 2 + 1 = 8 shards
BUCKET = "lt-gcs"


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    server = GcsEmulator(tmp_path_factory.mktemp("gcs")).start()
    server.create_bucket(BUCKET)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def env(gcs, tmp_path, monkeypatch):
    for key, value in gcs.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("LT_DIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LT_DIST_RETRIES", "8")


@pytest.fixture(scope="module")
def packed(gcs, tmp_path_factory):
    """The same images packed to gs://lt-gcs/ds and to a local folder."""
    root = tmp_path_factory.mktemp("gcs-pack")
    images = make_image_folder(root / "images", COUNTS, size=(20, 20))
    url = f"gs://{BUCKET}/ds"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in gcs.env().items():
            patch.setenv(key, value)
        patch.setenv("LT_DIST_CACHE", str(root / "cache"))
        for out in (url, str(root / "ds")):
            assert main(["pack", str(images), "--out", out, "--shard-count", "2", "--no-progress"]) == 0
    return url, root / "ds", images


def epoch(split_dir, workers):
    loader = BalancedLoader(LoaderConfig(split_dir, 2, None, SamplerConfig("instance", seed=5), "bytes", workers),
                            World(0, 1))
    return [(bytes(item), label) for data, labels in loader for item, label in zip(data, labels.tolist())]


def test_pack_to_gs_then_verify_and_one_epoch_yields_what_the_local_pack_yields(gcs, packed, capsys):
    url, local, _ = packed
    uploads = [path for method, path, status in gcs.requests() if method == "POST" and "/upload/" in path]
    assert len(uploads) == 8 + 4  # 8 shards, then ids, shards.parquet, dataset.json, manifest.parquet
    capsys.readouterr()
    assert main(["verify", url]) == 0
    assert f"{url}/train: 8 shards, 15 samples: OK" in capsys.readouterr().out
    remote = epoch(resolve_split(url, "train"), workers=2)  # forked workers: one gcsfs client each
    assert remote == epoch(str(local / "train"), workers=0)
    assert len(remote) == sum(COUNTS) and len(set(remote)) == sum(COUNTS)
    assert sorted(label for _, label in remote) == sorted(j for j, n in enumerate(COUNTS) for _ in range(n))


def test_missing_bucket_split_or_shard_is_named_by_its_url(gcs, packed, capsys):
    url, local, images = packed
    capsys.readouterr()
    for missing in ("gs://no-such-bucket/ds", f"gs://{BUCKET}/no-such-folder"):
        assert main(["verify", missing]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"'{missing}' holds no packed split" in err
    assert main(["pack", str(images), "--out", "gs://no-such-bucket/ds", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gs://no-such-bucket/ds" in err
    # a shard removed from the bucket after packing: verify names its URL
    copy, store = f"gs://{BUCKET}/gone", RemoteStore(StorageSettings.from_env())
    for path in sorted((local / "train").iterdir()):
        if path.name != "cls00002-00001.tar":
            store.upload(str(path), f"{copy}/train/{path.name}")
    capsys.readouterr()
    assert main(["verify", copy]) == 1
    assert f"cls00002-00001.tar: shard file is missing ({copy}/train/cls00002-00001.tar not found)" \
        in capsys.readouterr().out


class DeniedGcs(http.server.BaseHTTPRequestHandler):
    """Answers every request as GCS does when the caller may not read: 401 for an
    anonymous caller, 403 for a known one without the permission (path /b/forbidden/)."""

    def do_GET(self):
        code = 403 if "/b/forbidden/" in self.path else 401
        message = "caller does not have storage.objects.get access" if code == 403 else \
            "Anonymous caller does not have storage.objects.get access"
        body = json.dumps({"error": {"code": code, "message": message,
                                     "errors": [{"message": message, "reason": "forbidden"}]}}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        type(self).requests.append(self.path)

    def log_message(self, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # gcsfs drops its other concurrent requests once one is refused: a broken pipe here


@pytest.mark.parametrize("bucket, code", [("forbidden", 403), ("private", 401)])
def test_gcs_401_and_403_are_access_denied_at_the_first_answer(monkeypatch, tmp_path, capsys, caplog, bucket, code):
    DeniedGcs.requests = []
    server = QuietServer(("127.0.0.1", 0), DeniedGcs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{server.server_address[1]}")
        store = RemoteStore(StorageSettings.from_env())
        url = f"gs://{bucket}/ds/train/manifest.parquet"
        with pytest.raises(PermissionError, match=rf"{url}: access denied \(HTTP {code}\)"):
            store.download(url, str(tmp_path / "manifest.parquet"))
        # one try: gcsfs's get_file asks for the object's metadata (and for a "folder" of that
        # name alongside); a retry, gcsfs's own or with_retries', would ask again
        assert len(DeniedGcs.requests) == len(set(DeniedGcs.requests)), DeniedGcs.requests
        capsys.readouterr()
        assert main(["verify", f"gs://{bucket}/ds"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"gs://{bucket}/ds/manifest.parquet: access denied (HTTP {code})" in err
        # gcsfs logs what it gives up on with a traceback; the one line above says it all
        assert not [r for r in caplog.records if r.name.startswith("gcsfs") and r.levelno >= logging.ERROR]
    finally:
        server.shutdown()
        server.server_close()


def test_an_emulator_gets_the_json_api_client_anonymous_unless_a_token_is_given(gcs, monkeypatch):
    """gcsfs's default class (the "extended" one) asks the gRPC storage-control API for
    each bucket's layout, which an emulator does not serve (a 60 s timeout per call):
    under STORAGE_EMULATOR_HOST the JSON-API class is used, with token "anon" by default."""
    import gcsfs.core

    fs = RemoteStore(StorageSettings())._fs("gs://b/k")
    assert type(fs) is gcsfs.core.GCSFileSystem and fs.credentials.token == "anon" and fs._location == gcs.url
    fs = RemoteStore(StorageSettings(options={"token": "anon", "project": "p"}))._fs("gs://b/k")
    assert fs.project == "p"
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")  # a real bucket: the options go to gcsfs as given
    fs = RemoteStore(StorageSettings(options={"token": "anon", "project": "p"}))._fs("gs://b/k")
    assert isinstance(fs, gcsfs.core.GCSFileSystem) and fs.credentials.token == "anon" and fs.project == "p"
    assert fs._location.startswith("https://") and "127.0.0.1" not in fs._location
