"""``biasunlearn data``: locate, verify and download the benchmark data."""

from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="locate, verify or download the benchmark data")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    for name, help_text in (
        ("download", "fetch the benchmark files from their canonical sources and check their sha256"),
        ("verify", "check the sha256 of the benchmark files in the data folder"),
        ("path", "print the data folder that would be used"),
    ):
        d = dsub.add_parser(name, help=help_text)
        d.add_argument("--data-dir", default=None, help="data folder (default: $BIASUNLEARN_DATA, then the cache)")
        if name == "download":
            d.add_argument("--force", action="store_true", help="fetch again even when a file checks out")
            d.add_argument("--files", default="", help="comma-separated relative paths (default: all)")
        d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from biasunlearn.data import download as dl
    from biasunlearn.data.paths import default_cache_root, resolve_data_dir

    if args.data_command == "download":
        target = args.data_dir or None
        import os
        from pathlib import Path

        from biasunlearn.data.paths import ENV_VAR

        folder = Path(target or os.environ.get(ENV_VAR) or default_cache_root() / "data")
        files = [f.strip() for f in args.files.split(",") if f.strip()] or None
        paths = dl.download(folder, files=files, force=args.force)
        print(f"{len(paths)} files ready in {folder}")
        return 0
    folder = resolve_data_dir(args.data_dir)
    if args.data_command == "path":
        print(folder)
        return 0
    status = dl.verify(folder)
    bad = {k: v for k, v in status.items() if v != "ok"}
    for k, v in status.items():
        print(f"{v:<9}{k}")
    return 1 if bad else 0
