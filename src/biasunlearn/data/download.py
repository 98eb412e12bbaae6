"""Fetch the benchmark files into a data folder, verifying each against its pinned sha256.

Each file is written to a temporary file in its destination folder, checked (size and sha256) and only
then moved into place with :func:`os.replace`, so a failed or interrupted download leaves nothing behind.
The fetch function is injectable (``fetch=``) and any URL urllib understands works, including
``file://`` and ``http://127.0.0.1``, which is how the tests serve fixture bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from biasunlearn.data.paths import DATA_FILES, DataFile
from biasunlearn.errors import ConfigError, DataError
from biasunlearn.utils import sha256_file

logger = logging.getLogger(__name__)

Fetcher = Callable[[str, BinaryIO, float], None]
"""``fetch(url, out, timeout)`` writes the body at ``url`` to the binary file ``out``; raises on failure."""


def fetch_url(url: str, out: BinaryIO, timeout: float) -> None:
    """Default fetcher: urllib (honours the usual proxy variables), streamed in 1 MiB blocks."""
    req = urllib.request.Request(url, headers={"User-Agent": "biasunlearn-data-download"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        status = getattr(resp, "status", None)
        if status is not None and status >= 400:
            raise urllib.error.HTTPError(url, status, "bad status", resp.headers, None)
        shutil.copyfileobj(resp, out, length=1 << 20)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch_one(df: DataFile, dest: Path, fetch: Fetcher, timeout: float) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                fetch(df.url, out, timeout)
            except (OSError, http.client.HTTPException, ValueError) as e:
                # URLError, HTTPError, socket timeouts and connection resets are all OSErrors.
                raise DataError(f"download of {df.relpath} from {df.url} failed: {e}") from e
            out.flush()
            os.fsync(out.fileno())
        size = tmp.stat().st_size
        if df.size is not None and size != df.size:
            raise DataError(f"download of {df.relpath} from {df.url}: got {size} bytes, expected {df.size}; "
                            "nothing was written")
        digest = _hash_file(tmp)
        if digest != df.sha256:
            raise DataError(f"download of {df.relpath} from {df.url}: sha256 mismatch (got {digest}, "
                            f"expected {df.sha256}); nothing was written")
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _select(files: Sequence[str] | None, registry: Mapping[str, DataFile]) -> list[DataFile]:
    if files is None:
        return list(registry.values())
    unknown = [f for f in files if f not in registry]
    if unknown:
        raise ConfigError(f"unknown data file(s) {', '.join(map(repr, unknown))}; "
                          f"known: {', '.join(registry)}")
    return [registry[f] for f in dict.fromkeys(files)]


def verify(data_dir: str | os.PathLike[str], files: Sequence[str] | None = None,
           registry: Mapping[str, DataFile] | None = None) -> dict[str, str]:
    """``relpath -> "ok" | "missing" | "mismatch"`` for each registered file under ``data_dir``."""
    reg = DATA_FILES if registry is None else registry
    out: dict[str, str] = {}
    for df in _select(files, reg):
        p = Path(data_dir) / df.relpath
        if not p.is_file():
            out[df.relpath] = "missing"
        else:
            out[df.relpath] = "ok" if sha256_file(p) == df.sha256 else "mismatch"
    return out


def download(data_dir: str | os.PathLike[str], files: list[str] | None = None, force: bool = False,
             timeout: float = 60, *, registry: Mapping[str, DataFile] | None = None,
             fetch: Fetcher | None = None) -> list[Path]:
    """Download ``files`` (relpaths of :data:`DATA_FILES`; all when None) into ``data_dir``.

    A file already present with the right sha256 is skipped unless ``force``; one present with a wrong
    sha256 is replaced. Returns the paths of all requested files. On a network error, size or sha256
    mismatch raises :class:`DataError` naming the file and URL; no partial file is left.
    """
    reg = DATA_FILES if registry is None else registry
    fetcher = fetch_url if fetch is None else fetch
    root = Path(data_dir)
    paths: list[Path] = []
    for df in _select(files, reg):
        dest = root / df.relpath
        if dest.is_file() and not force:
            if sha256_file(dest) == df.sha256:
                logger.info("%s: present, checksum ok; skipped", df.relpath)
                paths.append(dest)
                continue
            logger.warning("%s: present but its sha256 differs from the pinned one; downloading again",
                           df.relpath)
        logger.info("%s: downloading %s", df.relpath, df.url)
        _fetch_one(df, dest, fetcher, timeout)
        logger.info("%s: saved (%s bytes, sha256 ok)", df.relpath, dest.stat().st_size)
        paths.append(dest)
    return paths
