"""Where the benchmark data lives, and the registry of the files it must contain.

The data folder has the layout of ``../shared/data`` (see its README)::

    stereoset/dev.json, stereoset/test.json
    crows_pairs/crows_pairs_anonymized.csv
    bbq/data/<Category>.jsonl, bbq/analysis_scripts/additional_metadata.csv

It is chosen by :func:`resolve_data_dir`: the ``--data-dir`` flag, else ``$BIASUNLEARN_DATA``, else the
per-user cache (``biasunlearn data download`` fills it when online).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from biasunlearn.errors import DataError
from biasunlearn.utils import sha256_file

logger = logging.getLogger(__name__)

ENV_VAR = "BIASUNLEARN_DATA"
CACHE_ENV_VAR = "BIASUNLEARN_CACHE"

_HOW_TO_FIX = (
    f"pass --data-dir DIR, set {ENV_VAR}=DIR, or run `biasunlearn data download` when online "
    "(see the data README for the expected layout)"
)


def default_cache_root() -> Path:
    """``$BIASUNLEARN_CACHE``, else ``$XDG_CACHE_HOME/biasunlearn``, else ``~/.cache/biasunlearn``."""
    explicit = os.environ.get(CACHE_ENV_VAR)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "biasunlearn"
    return Path.home() / ".cache" / "biasunlearn"


def resolve_data_dir(flag: str | os.PathLike[str] | None = None) -> Path:
    """The data folder: the ``--data-dir`` flag, else ``$BIASUNLEARN_DATA``, else the cache.

    Raises :class:`DataError` naming the source that was used when the folder does not exist.
    """
    if flag is not None and str(flag) != "":
        path, source = Path(flag).expanduser(), "flag --data-dir"
    elif os.environ.get(ENV_VAR):
        path, source = Path(os.environ[ENV_VAR]).expanduser(), f"environment variable {ENV_VAR}"
    else:
        path, source = default_cache_root() / "data", "the default cache location"
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"data folder {path} (from {source}) {what}; {_HOW_TO_FIX}")
    logger.debug("data folder %s (from %s)", path, source)
    return path


@dataclass(frozen=True)
class DataFile:
    """One benchmark file: where it goes under the data folder, where it comes from, what it hashes to."""

    relpath: str
    url: str
    sha256: str
    size: int | None


_STEREOSET_DEV = "moinnadeem/StereoSet", "ead7d086a64a192a1eca88e0dd2fd163de375218"
_BIAS_BENCH = "McGill-NLP/bias-bench", "291426aab926f78ecfc7bd040b531429ee8123e0"
_CROWS = "nyu-mll/crows-pairs", "8aaac11c485473159ec9328a65253a5be9a479dc"
_BBQ = "nyu-mll/BBQ", "bea11bd97d79217245b5871acd247b9d6eb24598"


def _raw(repo_commit: tuple[str, str], path: str) -> str:
    repo, commit = repo_commit
    return f"https://raw.githubusercontent.com/{repo}/{commit}/{path}"


# (relpath, upstream repo@commit, path in the upstream repo, sha256, bytes), as in the data README.
_TABLE: tuple[tuple[str, tuple[str, str], str, str, int], ...] = (
    ("stereoset/dev.json", _STEREOSET_DEV, "data/dev.json",
     "73a0f31b711688112602e4c3ac6ab1e1a7cadcdd67df6c6fd55501c889676c90", 12502245),
    ("stereoset/test.json", _BIAS_BENCH, "data/stereoset/test.json",
     "f3f70d1880b443388744958d192c25364d68c2b8ae7aeb9174903bcf415c394e", 47056068),
    ("crows_pairs/crows_pairs_anonymized.csv", _CROWS, "data/crows_pairs_anonymized.csv",
     "dfb36986ce0502abbaf7055b9176da3d08d48e07df1251991b5dfbcbceab9d0c", 437764),
    ("bbq/data/Age.jsonl", _BBQ, "data/Age.jsonl",
     "46e805b3fc2d8cbd26eeb8e8430d98cf7b2dc9c83574ff3674e8ce4f0fca2a60", 3091834),
    ("bbq/data/Disability_status.jsonl", _BBQ, "data/Disability_status.jsonl",
     "375d40d9b71f056150264445ec189b13934998f3f49a1e311aa7578eb3b45e5f", 1336984),
    ("bbq/data/Gender_identity.jsonl", _BBQ, "data/Gender_identity.jsonl",
     "8b5adbb368510a97d5775dc43e1c719e0249fe2da33f13c83e3e29edafec7a00", 4331406),
    ("bbq/data/Nationality.jsonl", _BBQ, "data/Nationality.jsonl",
     "a583e74666aec0341ded8aa3983e7cad694eb24de72c254d28b2df3035720090", 2900040),
    ("bbq/data/Physical_appearance.jsonl", _BBQ, "data/Physical_appearance.jsonl",
     "e48d7e13508565f4801574e611043470c25c95a0a62af3699cb5ee7cb02608fb", 1347476),
    ("bbq/data/Race_ethnicity.jsonl", _BBQ, "data/Race_ethnicity.jsonl",
     "4a9f1214cfaa115ce7f0bdb40609122e431f5152c71b8ca64d665e483b946ae6", 6062426),
    ("bbq/data/Race_x_SES.jsonl", _BBQ, "data/Race_x_SES.jsonl",
     "af8e2ae3d0e5be9ebcbfe7149e591d47ff649e263307f4548f7fb12f6a6d83e8", 11222218),
    ("bbq/data/Race_x_gender.jsonl", _BBQ, "data/Race_x_gender.jsonl",
     "e5dbba782f8c4e25b99dd5470b5136e2db73dbf401cf6d4a5a3ed31b02f95696", 13094106),
    ("bbq/data/Religion.jsonl", _BBQ, "data/Religion.jsonl",
     "cb9555f9f3454a52cd2df85956b59bd7fcca5aa922c8527693b1164d08417616", 1118728),
    ("bbq/data/SES.jsonl", _BBQ, "data/SES.jsonl",
     "9f92754bb037b0982604b9112705fb81d60a19d9e759c67e4a85e484a070f528", 5696950),
    ("bbq/data/Sexual_orientation.jsonl", _BBQ, "data/Sexual_orientation.jsonl",
     "2c71036b9e7584fe589c42aef32c1a42bc01b9a5e9b1b8704342630cdb08cefd", 729010),
    ("bbq/analysis_scripts/additional_metadata.csv", _BBQ, "analysis_scripts/additional_metadata.csv",
     "f36708416b0e7adb81b47ad1926f9c39c2beb611702b73b01e06c9b6c9ffbd3d", 5827321),
)

DATA_FILES: dict[str, DataFile] = {
    rel: DataFile(relpath=rel, url=_raw(src, upstream_path), sha256=sha, size=size)
    for rel, src, upstream_path, sha, size in _TABLE
}

STEREOSET_DEV = "stereoset/dev.json"
STEREOSET_TEST = "stereoset/test.json"
CROWS_PAIRS = "crows_pairs/crows_pairs_anonymized.csv"
BBQ_METADATA = "bbq/analysis_scripts/additional_metadata.csv"


def data_file(data_dir: str | os.PathLike[str], relpath: str) -> Path:
    """``data_dir / relpath``, or :class:`DataError` naming the missing file and what to do."""
    path = Path(data_dir) / relpath
    if not path.is_file():
        raise DataError(f"data file {relpath} not found at {path}; {_HOW_TO_FIX}")
    return path


def dataset_checksums(data_dir: str | os.PathLike[str], relpaths: Iterable[str]) -> dict[str, str]:
    """sha256 of each named file under ``data_dir`` (for run manifests)."""
    return {rel: sha256_file(data_file(data_dir, rel)) for rel in relpaths}
