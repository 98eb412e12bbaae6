"""Benchmark data: locating the data folder, loaders for StereoSet, CrowS-Pairs and BBQ, the StereoSet
train/control/report splits, and the checksummed downloader."""

from __future__ import annotations

from biasunlearn.data.bbq import BBQExample, bbq_categories, load_bbq, load_bbq_metadata
from biasunlearn.data.crows_pairs import CrowsPair, load_crows_pairs
from biasunlearn.data.paths import (
    DATA_FILES,
    ENV_VAR,
    DataFile,
    data_file,
    dataset_checksums,
    resolve_data_dir,
)
from biasunlearn.data.splits import Splits, check_no_leakage, make_splits, paper_filter, split_by_name
from biasunlearn.data.stereoset import BIAS_TYPES, LABELS, StereoExample, StereoSentence, load_stereoset

__all__ = [
    "BIAS_TYPES", "DATA_FILES", "ENV_VAR", "LABELS", "BBQExample", "CrowsPair", "DataFile", "Splits",
    "StereoExample", "StereoSentence", "bbq_categories", "check_no_leakage", "data_file", "dataset_checksums",
    "load_bbq", "load_bbq_metadata", "load_crows_pairs", "load_stereoset", "make_splits", "paper_filter",
    "resolve_data_dir", "split_by_name",
]
