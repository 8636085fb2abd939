"""The artifact store on S3, against a real S3 endpoint: moto's server, started here on 127.0.0.1 and
stopped by its PID. A second project folder plays the second host (a GPU worker reading what a CPU
worker curated): it has no local copy and reads everything through the bucket."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from smolforge.artifacts import ArtifactError, find_artifact, local_folder, store_at
from smolforge.errors import ConfigError
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.train.data import CorpusSources

MOTO = Path(sys.executable).parent / "moto_server"
SMOLFORGE = Path(sys.executable).parent / "smolforge"
BUCKET = "smolforge-team"
KEY = "0123456789abcdef"
CALLS: list[str] = []


@artifact_step("demo")
def make_demo(out: Path, text: str, runtime: Runtime) -> dict:
    CALLS.append(text)
    (out / "sub").mkdir()
    (out / "sub" / "data.txt").write_text(text)
    (out / "big.bin").write_bytes(os.urandom(300_000))
    return {"chars": len(text)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def endpoint():
    port = _free_port()
    server = subprocess.Popen([str(MOTO), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not answer on {url}") from None
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture
def s3(endpoint, monkeypatch, tmp_path):
    """Credentials and endpoint as a team's `.env` sets them, a fresh bucket, and the URL of a store in it."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "team", "AWS_SECRET_ACCESS_KEY": "secret", "AWS_ENDPOINT_URL": endpoint,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, use_listings_cache=False)
    bucket = f"{BUCKET}-{tmp_path.name.lower().replace('_', '-')[-30:]}"
    fs.mkdir(bucket)
    return fs, f"s3://{bucket}/artifacts"


def _write(store, text: str = "hello") -> None:
    with store.write("demo", KEY, step="demo", config={"text": text}) as (tmp, metrics):
        (tmp / "sub").mkdir()
        (tmp / "sub" / "data.txt").write_text(text)
        (tmp / "big.bin").write_bytes(b"\x01" * 200_000)
        metrics["n"] = 1


def test_an_artifact_written_on_s3_is_read_on_another_host_through_a_checked_copy(s3, tmp_path, monkeypatch):
    fs, url = s3
    writer = store_at(url, tmp_path / "cpu-host")
    _write(writer)
    remote = url.removeprefix("s3://")
    assert fs.cat_file(f"{remote}/demo/{KEY}/sub/data.txt") == b"hello"
    assert json.loads(fs.cat_file(f"{remote}/demo/{KEY}/manifest.json"))["files"]["big.bin"]["size"] == 200_000

    # the other host: a ref passed to it reads through its own project folder's copy
    monkeypatch.setenv("SMOLFORGE_HOME", str(tmp_path / "gpu-host"))
    ref = writer.ref("demo", KEY)
    assert ref.uri == f"{url}/demo/{KEY}"
    folder = ref.path
    assert folder.is_relative_to(tmp_path / "gpu-host") and (folder / "sub" / "data.txt").read_text() == "hello"
    assert ref.manifest()["metrics"] == {"n": 1}

    reader = store_at(url, tmp_path / "gpu-host")
    assert reader.path("demo", KEY) == folder
    # a corrupt, a truncated and a missing file in the copy are fetched again and checked
    (folder / "sub" / "data.txt").write_text("jello")
    (folder / "big.bin").write_bytes(b"\x01" * 10)
    assert reader.get("demo", KEY) == ref
    assert (folder / "sub" / "data.txt").read_text() == "hello" and (folder / "big.bin").stat().st_size == 200_000
    (folder / "big.bin").unlink()
    (folder / "manifest.json").unlink()  # a copy interrupted before its manifest
    assert reader.problem("demo", KEY) is None and (folder / "big.bin").is_file()
    assert find_artifact(reader, KEY) == ref and find_artifact(reader, f"demo:{KEY}") == ref

    rows = reader.list()
    assert [(r["kind"], r["key"], r["path"]) for r in rows] == [("demo", KEY, ref.uri)]
    assert rows[0]["bytes"] == 200_005


def test_a_tampered_remote_file_is_refused_and_the_step_recomputes_it(s3, tmp_path, monkeypatch):
    fs, url = s3
    remote = url.removeprefix("s3://")
    monkeypatch.setenv("SMOLFORGE_HOME", str(tmp_path / "cpu-host"))
    CALLS.clear()
    first = make_demo.fn("tampered", Runtime(root=url))
    assert CALLS == ["tampered"]
    assert make_demo.fn("tampered", Runtime(root=url)) == first and CALLS == ["tampered"]  # cached

    data = f"{remote}/demo/{first.key}/sub/data.txt"
    fs.pipe_file(data, b"TAMPERED")  # same size, other bytes
    monkeypatch.setenv("SMOLFORGE_HOME", str(tmp_path / "gpu-host"))
    fresh = store_at(url, tmp_path / "gpu-host")
    assert fresh.problem("demo", first.key) == f"file sub/data.txt does not match its hash in {first.uri}"
    with pytest.raises(ArtifactError, match="does not match its hash"):
        _ = first.path
    fs.pipe_file(data, b"short")
    assert fresh.problem("demo", first.key) == f"file sub/data.txt has 5 bytes, manifest says 8 in {first.uri}"

    again = make_demo.fn("tampered", Runtime(root=url))  # the other host re-makes it, and re-publishes it
    assert CALLS == ["tampered", "tampered"] and again == first
    assert fs.cat_file(data) == b"tampered"
    assert store_at(url, tmp_path / "third-host").problem("demo", first.key) is None


def test_a_half_written_artifact_is_invisible(s3, tmp_path):
    fs, url = s3
    remote = url.removeprefix("s3://")
    writer = store_at(url, tmp_path / "cpu-host")
    with pytest.raises(RuntimeError), writer.write("demo", KEY, step="demo") as (tmp, _):
        (tmp / "half.bin").write_bytes(b"x" * 10)
        raise RuntimeError("crash mid-write")
    assert not fs.exists(f"{remote}/demo/{KEY}")

    # a crash between the files' upload and the manifest's: the files are there, the artifact is not
    writer_fs = writer._remote[0]
    real_put_file = writer_fs.put_file

    def dies_at_the_manifest(lpath, rpath, *args, **kwargs):
        if str(rpath).endswith("manifest.json"):
            raise ConnectionError("connection lost")
        return real_put_file(lpath, rpath, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, pytest.raises(ConnectionError):
        patch.setattr(writer_fs, "put_file", dies_at_the_manifest)
        _write(writer)
    assert fs.exists(f"{remote}/demo/{KEY}/big.bin") and not fs.exists(f"{remote}/demo/{KEY}/manifest.json")
    other = store_at(url, tmp_path / "gpu-host")
    assert other.get("demo", KEY) is None and other.problem("demo", KEY) == "missing"
    assert other.list() == [] and find_artifact(other, KEY) is None and not other.has("demo", KEY)

    # re-publishing takes the manifest away first: a reader sees the old artifact or the new one
    _write(writer, "first")
    with pytest.MonkeyPatch.context() as patch, pytest.raises(ConnectionError):
        patch.setattr(writer_fs, "put_file", dies_at_the_manifest)
        _write(writer, "again")
    assert other.get("demo", KEY) is None


def test_a_store_that_cannot_be_used_is_refused_naming_the_url(s3, monkeypatch, tmp_path):
    _, url = s3
    missing = "s3://no-such-bucket-here/artifacts"
    with pytest.raises(ConfigError, match=r"s3://no-such-bucket-here/artifacts: bucket 'no-such-bucket-here' does not exist at http://127\.0\.0\.1"):
        store_at(missing, tmp_path).check()
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials to fall back on
    with pytest.raises(ConfigError, match=rf"{url}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"):
        store_at(url, tmp_path).check()


def _smolforge(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SMOLFORGE), *args], env=env, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_the_curate_flow_runs_on_s3_and_a_second_host_takes_it_from_the_cache(s3, sample_corpus, outside_env, tmp_path, monkeypatch):
    fs, url = s3
    remote = url.removeprefix("s3://")
    env = {
        **outside_env, **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")},
        "SMOLFORGE_ARTIFACTS_URL": url, "SMOLFORGE_HOME": str(tmp_path / "home"),
    }
    curate = [
        "run", "curate", "--preset", "tiny", "--set", "curate.sample_corpus=null", "--set", f"curate.data_dir={sample_corpus}",
        "--set", "curate.sources=[{name: chat, kind: jsonl, path: 'jsonl/*.jsonl'}]",
        *(arg for stage in ("pretrain", "distill", "finetune", "merge", "evaluate", "promote") for arg in ("--set", f"{stage}=null")),
    ]

    refused = _smolforge({**env, "SMOLFORGE_ARTIFACTS_URL": "s3://no-such-bucket-here/x"}, *curate)
    assert refused.returncode == 2 and "bucket 'no-such-bucket-here' does not exist" in refused.stderr + refused.stdout

    first = _smolforge(env, *curate)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    corpora = fs.glob(f"{remote}/corpus/*/manifest.json")
    assert len(corpora) == 1
    key = corpora[0].split("/")[-2]
    assert f"{url}/corpus/{key}" in first.stdout
    assert not (tmp_path / "home" / "artifacts").exists()  # nothing in the project folder's own store
    assert fs.glob(f"{remote}/prefect-results/corpus-*")  # Prefect's results beside the artifacts
    assert fs.glob(f"{remote}/mlartifacts/**")  # and MLflow's

    # the second host: the same servers' records, no local copy of anything
    shutil.rmtree(tmp_path / "home" / "cache")
    second = _smolforge(env, *curate)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "curate cached" in second.stdout and f"{url}/corpus/{key}" in second.stdout
    copy = store_at(url, tmp_path / "home").path("corpus", key)
    assert (copy / "manifest.json").is_file()  # read back from the bucket and checked

    listed = _smolforge(env, "artifacts", "--kind", "corpus")
    assert listed.returncode == 0 and key in listed.stdout and url in listed.stdout

    # what pretraining on a third host reads: the corpus record names its token shards and tokenizer
    # by their URLs in the bucket, and each comes through that host's checked copy
    monkeypatch.setenv("SMOLFORGE_HOME", str(tmp_path / "gpu-host"))
    sources = CorpusSources.from_corpus_json(local_folder(f"{url}/corpus/{key}"))
    assert sources["chat"].folder.is_relative_to(tmp_path / "gpu-host") and sources.eos_id >= 0
    assert Path(sources.tokenizer).is_relative_to(tmp_path / "gpu-host") and load_tokenizer(sources.tokenizer).vocab_size > 256
