"""Checksummed download: file:// and a local HTTP server stand in for GitHub; no network is used."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from biasunlearn.data.download import download, fetch_url, verify
from biasunlearn.data.paths import DATA_FILES, DataFile
from biasunlearn.errors import ConfigError, DataError
from biasunlearn.utils import sha256_file

RELS = ("stereoset/dev.json", "crows_pairs/crows_pairs_anonymized.csv")


def _registry(source_dir: Path, base_url: str, **override) -> dict[str, DataFile]:
    reg = {}
    for rel in RELS:
        src = source_dir / rel
        fields = dict(relpath=rel, url=f"{base_url}/{rel}", sha256=sha256_file(src), size=src.stat().st_size)
        fields.update(override.get(rel, {}))
        reg[rel] = DataFile(**fields)
    return reg


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def http_base(fixture_data_dir, monkeypatch) -> Iterator[str]:
    """Serve the fixture data folder on 127.0.0.1 for the duration of one test."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    handler = functools.partial(_QuietHandler, directory=str(fixture_data_dir))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_from_local_http_server(fixture_data_dir, tmp_path, http_base):
    reg = _registry(fixture_data_dir, http_base)
    dest = tmp_path / "data"
    got = download(dest, registry=reg, timeout=5)
    assert got == [dest / rel for rel in RELS]
    for rel in RELS:
        assert (dest / rel).read_bytes() == (fixture_data_dir / rel).read_bytes()
    assert _leftovers(dest) == sorted(RELS)  # no temporary files remain
    assert verify(dest, registry=reg) == dict.fromkeys(RELS, "ok")


def test_download_from_file_url_selected_files(fixture_data_dir, tmp_path):
    reg = _registry(fixture_data_dir, fixture_data_dir.as_uri())
    got = download(tmp_path, files=["stereoset/dev.json"], registry=reg)
    assert got == [tmp_path / "stereoset" / "dev.json"]
    assert _leftovers(tmp_path) == ["stereoset/dev.json"]
    with pytest.raises(ConfigError, match=r"stereoset/train\.json"):
        download(tmp_path, files=["stereoset/train.json"], registry=reg)


def test_checksum_mismatch_leaves_nothing(fixture_data_dir, tmp_path, http_base):
    rel = "stereoset/dev.json"
    reg = _registry(fixture_data_dir, http_base, **{rel: {"sha256": "0" * 64}})
    with pytest.raises(DataError) as ei:
        download(tmp_path, files=[rel], registry=reg, timeout=5)
    msg = str(ei.value)
    assert rel in msg and reg[rel].url in msg and "sha256 mismatch" in msg
    assert _leftovers(tmp_path) == []


def test_size_mismatch_leaves_nothing(fixture_data_dir, tmp_path):
    rel = "crows_pairs/crows_pairs_anonymized.csv"
    reg = _registry(fixture_data_dir, fixture_data_dir.as_uri(), **{rel: {"size": 3}})
    with pytest.raises(DataError, match=r"crows_pairs_anonymized\.csv from file://.*expected 3"):
        download(tmp_path, files=[rel], registry=reg)
    assert _leftovers(tmp_path) == []


def test_network_errors_name_file_and_url(fixture_data_dir, tmp_path, http_base):
    rel = "stereoset/dev.json"
    reg = _registry(fixture_data_dir, http_base, **{rel: {"url": f"{http_base}/no/such/file.json"}})
    with pytest.raises(DataError) as ei:
        download(tmp_path, files=[rel], registry=reg, timeout=5)
    assert rel in str(ei.value) and "/no/such/file.json" in str(ei.value) and "404" in str(ei.value)
    reg = _registry(fixture_data_dir, (tmp_path / "missing").as_uri())
    with pytest.raises(DataError, match=r"stereoset/dev\.json from file://"):
        download(tmp_path / "out", files=[rel], registry=reg)
    assert _leftovers(tmp_path) == []


def test_interrupted_fetch_leaves_no_partial_file(fixture_data_dir, tmp_path):
    reg = _registry(fixture_data_dir, "https://example.invalid")

    def half_then_fail(url, out, timeout):
        out.write(b'{"version": "1.0-dev", "da')
        raise ConnectionResetError("connection reset by peer")

    with pytest.raises(DataError, match=r"stereoset/dev\.json from https://example\.invalid.*reset"):
        download(tmp_path, registry=reg, fetch=half_then_fail)
    assert _leftovers(tmp_path) == []


def test_present_file_is_skipped_unless_forced_or_wrong(fixture_data_dir, tmp_path):
    reg = _registry(fixture_data_dir, "https://example.invalid")
    calls: list[str] = []

    def serve_fixture(url, out, timeout):
        calls.append(url)
        out.write((fixture_data_dir / url.removeprefix("https://example.invalid/")).read_bytes())

    download(tmp_path, registry=reg, fetch=serve_fixture)
    assert len(calls) == 2
    got = download(tmp_path, registry=reg, fetch=serve_fixture)
    assert len(calls) == 2  # both present with the right checksum: nothing fetched
    assert got == [tmp_path / rel for rel in RELS]
    download(tmp_path, files=[RELS[0]], registry=reg, fetch=serve_fixture, force=True)
    assert calls[2:] == [f"https://example.invalid/{RELS[0]}"]
    # a present file with the wrong content is fetched again and replaced
    (tmp_path / RELS[1]).write_text("corrupted\n")
    assert verify(tmp_path, registry=reg)[RELS[1]] == "mismatch"
    download(tmp_path, registry=reg, fetch=serve_fixture)
    assert calls[3:] == [f"https://example.invalid/{RELS[1]}"]
    assert (tmp_path / RELS[1]).read_bytes() == (fixture_data_dir / RELS[1]).read_bytes()


def test_verify_missing_and_default_registry(tmp_path):
    status = verify(tmp_path)
    assert set(status) == set(DATA_FILES) and set(status.values()) == {"missing"}


def test_fetch_url_reads_file_urls(fixture_data_dir, tmp_path):
    src = fixture_data_dir / "stereoset" / "test.json"
    with open(tmp_path / "copy", "wb") as out:
        fetch_url(src.as_uri(), out, timeout=5)
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()
