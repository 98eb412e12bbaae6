"""Data folder resolution, the file registry and checksums."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from biasunlearn.data import paths
from biasunlearn.data.paths import (
    DATA_FILES,
    ENV_VAR,
    data_file,
    dataset_checksums,
    default_cache_root,
    resolve_data_dir,
)
from biasunlearn.errors import DataError
from biasunlearn.utils import sha256_file

EXPECTED_RELPATHS = {
    "stereoset/dev.json",
    "stereoset/test.json",
    "crows_pairs/crows_pairs_anonymized.csv",
    "bbq/analysis_scripts/additional_metadata.csv",
    *(f"bbq/data/{c}.jsonl" for c in (
        "Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance", "Race_ethnicity",
        "Race_x_SES", "Race_x_gender", "Religion", "SES", "Sexual_orientation",
    )),
}


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in (ENV_VAR, paths.CACHE_ENV_VAR, "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_default_cache_root_precedence(clean_env, tmp_path):
    assert default_cache_root() == tmp_path / "home" / ".cache" / "biasunlearn"
    clean_env.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "xdg" / "biasunlearn"
    clean_env.setenv(paths.CACHE_ENV_VAR, str(tmp_path / "explicit"))
    assert default_cache_root() == tmp_path / "explicit"


def test_resolve_data_dir_flag_beats_env_beats_cache(clean_env, tmp_path):
    flag_dir, env_dir, cache_dir = tmp_path / "flag", tmp_path / "env", tmp_path / "cache"
    for d in (flag_dir, env_dir, cache_dir / "data"):
        d.mkdir(parents=True)
    clean_env.setenv(paths.CACHE_ENV_VAR, str(cache_dir))
    assert resolve_data_dir() == cache_dir / "data"
    clean_env.setenv(ENV_VAR, str(env_dir))
    assert resolve_data_dir() == env_dir
    assert resolve_data_dir(str(flag_dir)) == flag_dir
    assert resolve_data_dir(flag_dir) == flag_dir


@pytest.mark.parametrize("source", ["flag", "env", "cache"])
def test_resolve_data_dir_missing_names_source_and_remedy(clean_env, tmp_path, source):
    missing = tmp_path / "nope"
    clean_env.setenv(paths.CACHE_ENV_VAR, str(missing))
    flag = None
    if source == "env":
        clean_env.setenv(ENV_VAR, str(missing))
    elif source == "flag":
        flag = missing
    with pytest.raises(DataError) as ei:
        resolve_data_dir(flag)
    msg = str(ei.value)
    expected_source = {"flag": "--data-dir", "env": ENV_VAR, "cache": "cache"}[source]
    assert expected_source in msg
    assert str(missing) in msg
    for remedy in ("--data-dir", ENV_VAR, "biasunlearn data download"):
        assert remedy in msg


def test_resolve_data_dir_rejects_a_file(clean_env, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        resolve_data_dir(f)


def test_registry_lists_every_readme_file_with_pinned_urls():
    assert set(DATA_FILES) == EXPECTED_RELPATHS
    commits = {
        "stereoset/dev.json": "moinnadeem/StereoSet/ead7d086a64a192a1eca88e0dd2fd163de375218/data/dev.json",
        "stereoset/test.json":
            "McGill-NLP/bias-bench/291426aab926f78ecfc7bd040b531429ee8123e0/data/stereoset/test.json",
        "crows_pairs/crows_pairs_anonymized.csv":
            "nyu-mll/crows-pairs/8aaac11c485473159ec9328a65253a5be9a479dc/data/crows_pairs_anonymized.csv",
        "bbq/data/Age.jsonl": "nyu-mll/BBQ/bea11bd97d79217245b5871acd247b9d6eb24598/data/Age.jsonl",
        "bbq/analysis_scripts/additional_metadata.csv":
            "nyu-mll/BBQ/bea11bd97d79217245b5871acd247b9d6eb24598/analysis_scripts/additional_metadata.csv",
    }
    for rel, tail in commits.items():
        assert DATA_FILES[rel].url == f"https://raw.githubusercontent.com/{tail}"
    for rel, df in DATA_FILES.items():
        assert df.relpath == rel
        assert re.fullmatch(r"[0-9a-f]{64}", df.sha256), rel
        assert df.size is not None and df.size > 0
        assert df.url.startswith("https://raw.githubusercontent.com/")
    assert DATA_FILES["stereoset/test.json"].sha256 == (
        "f3f70d1880b443388744958d192c25364d68c2b8ae7aeb9174903bcf415c394e")
    assert len({df.sha256 for df in DATA_FILES.values()}) == len(DATA_FILES)


def test_data_file_found_and_missing(fixture_data_dir, tmp_path):
    assert data_file(fixture_data_dir, "stereoset/dev.json") == fixture_data_dir / "stereoset" / "dev.json"
    with pytest.raises(DataError) as ei:
        data_file(tmp_path, "stereoset/test.json")
    msg = str(ei.value)
    assert "stereoset/test.json" in msg
    assert "biasunlearn data download" in msg and "--data-dir" in msg


def test_dataset_checksums_fixture(fixture_data_dir):
    rels = ["stereoset/dev.json", "crows_pairs/crows_pairs_anonymized.csv"]
    sums = dataset_checksums(fixture_data_dir, rels)
    assert list(sums) == rels
    assert sums["stereoset/dev.json"] == sha256_file(fixture_data_dir / "stereoset" / "dev.json")
    assert sums["stereoset/dev.json"] != sums["crows_pairs/crows_pairs_anonymized.csv"]
    with pytest.raises(DataError, match=r"bbq/data/Religion\.jsonl"):
        dataset_checksums(fixture_data_dir, ["bbq/data/Religion.jsonl"])


def test_shared_data_matches_registry(shared_data_dir: Path):
    sums = dataset_checksums(shared_data_dir, DATA_FILES)
    for rel, df in DATA_FILES.items():
        assert sums[rel] == df.sha256, rel
        assert (shared_data_dir / rel).stat().st_size == df.size, rel
