#!/usr/bin/env python3
"""Build the plain-text corpora for perplexity and fine-tuning from Debian documentation packages.

Standard library only. The packages are fetched with ``apt-get download`` into a temporary folder and
unpacked with ``dpkg-deb -x`` (nothing is installed), or taken from ``--deb-dir`` when the .deb files are
already at hand (offline). Their HTML is turned into plain text, one paragraph per line: ``pre``,
``script``, ``style``, ``table``, navigation and head elements are dropped with their content, other
markup is removed (inline ``code`` keeps its text), entities are unescaped, whitespace is collapsed,
paragraphs of fewer than ``--min-words`` words are skipped and repeated paragraphs are kept once.
SQLite's ``codeofethics.html`` (the Rule of St. Benedict) is left out of the fine-tuning text.

Outputs, under ``--out``::

    text/finetune.txt   SQLite documentation (sqlite3-doc), public domain
    text/heldout.txt    PostgreSQL 15 documentation (postgresql-doc-15), PostgreSQL Licence; paragraphs
                        that also occur in finetune.txt are removed
    text/manifest.json  package versions and sha256 of each .deb, sha256, size, paragraph and word
                        counts of each output, licences

``text/heldout.txt`` is what ``biasunlearn eval --benchmarks perplexity`` reads from the data folder.

Usage::

    python scripts/prepare_text.py --out DATA_DIR [--deb-dir DIR_WITH_DEBS] [--min-words 8]
"""

from __future__ import annotations

import argparse
import hashlib
import html.parser
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("prepare_text")


@dataclass(frozen=True)
class Source:
    package: str
    html_dir: str  # inside the unpacked package
    output: str  # under <out>/text/
    licence: str
    role: str
    exclude: tuple[str, ...] = ()  # HTML file names left out


SOURCES = (
    # codeofethics.html quotes the Rule of St. Benedict: religious prescriptions, kept out of text used
    # to fine-tune a model whose social bias is measured afterwards.
    Source("sqlite3-doc", "usr/share/doc/sqlite3", "finetune.txt", "public domain (SQLite documentation)",
           "fine-tuning text", exclude=("codeofethics.html",)),
    Source("postgresql-doc-15", "usr/share/doc/postgresql-doc-15/html", "heldout.txt",
           "PostgreSQL Licence (permissive, MIT/BSD-like)", "held-out text for perplexity"),
)

# Elements dropped with everything inside them.
SKIP_TAGS = frozenset({"head", "script", "style", "pre", "table", "nav", "noscript", "svg", "math", "object",
                       "iframe", "textarea", "select"})
# Containers dropped by class (code blocks, navigation bars) whatever their tag.
SKIP_CLASSES = frozenset({"codeblock", "navheader", "navfooter", "programlisting", "synopsis", "screen",
                          "menu", "toc", "fancy_toc", "nosearch"})
# Elements that end the current paragraph where they start and where they end.
BLOCK_TAGS = frozenset({"p", "div", "li", "ul", "ol", "dl", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6",
                        "blockquote", "br", "hr", "tr", "td", "th", "section", "article", "header", "footer",
                        "figure", "figcaption", "caption", "body", "html", "title", "form", "address", "center"})
VOID_TAGS = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "embed", "source",
                       "track", "wbr", "param"})


class ParagraphParser(html.parser.HTMLParser):
    """Collects the text of block elements as paragraphs, skipping code, tables and navigation."""

    def __init__(self, min_words: int) -> None:
        super().__init__(convert_charrefs=True)  # entities are unescaped in handle_data
        self.min_words = min_words
        self.paragraphs: list[str] = []
        self._buf: list[str] = []
        self._skip_tag: str | None = None  # tag of the element being skipped
        self._skip_depth = 0  # nesting of that tag inside it

    def _skipped(self, tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if tag in SKIP_TAGS:
            return True
        classes = set()
        for name, value in attrs:
            if name == "class" and value:
                classes.update(value.split())
        return bool(classes & SKIP_CLASSES)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag and tag not in VOID_TAGS:
                self._skip_depth += 1
            return
        if tag not in VOID_TAGS and self._skipped(tag, attrs):
            self.flush()
            self._skip_tag, self._skip_depth = tag, 1
            return
        if tag in BLOCK_TAGS:
            self.flush()

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip_tag is None and tag in BLOCK_TAGS:
            self.flush()

    def handle_endtag(self, tag: str) -> None:
        if self._skip_tag is not None:
            if tag == self._skip_tag:
                self._skip_depth -= 1
                if self._skip_depth == 0:
                    self._skip_tag = None
            return
        if tag in BLOCK_TAGS:
            self.flush()

    def handle_data(self, data: str) -> None:
        if self._skip_tag is None:
            self._buf.append(data)

    def flush(self) -> None:
        text = re.sub(r"\s+", " ", "".join(self._buf)).strip()
        self._buf = []
        if len(text.split()) >= self.min_words:
            self.paragraphs.append(text)


def html_paragraphs(html_text: str, min_words: int = 8) -> list[str]:
    """Paragraphs of one HTML document, in order."""
    p = ParagraphParser(min_words)
    p.feed(html_text)
    p.close()
    p.flush()
    return p.paragraphs


def tree_paragraphs(root: Path, min_words: int, exclude: tuple[str, ...] = ()) -> tuple[list[str], int]:
    """Paragraphs of every ``*.html`` file under ``root`` (sorted paths) but those named in ``exclude``,
    duplicates kept once."""
    files = sorted(p for p in root.rglob("*.html") if p.is_file() and p.name not in exclude)
    if not files:
        raise SystemExit(f"error: no .html files under {root}")
    seen: set[str] = set()
    out: list[str] = []
    for f in files:
        for para in html_paragraphs(f.read_text(encoding="utf-8", errors="replace"), min_words):
            if para not in seen:
                seen.add(para)
                out.append(para)
    return out, len(files)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run(cmd: list[str], cwd: Path | None = None) -> str:
    log.info("$ %s", " ".join(cmd))
    try:
        res = subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise SystemExit(f"error: {cmd[0]} not found; this script needs Debian's apt-get and dpkg-deb") from None
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"error: {' '.join(cmd)} failed (exit {e.returncode}): {e.stderr.strip()}") from None
    return res.stdout


def find_deb(folder: Path, package: str) -> Path:
    debs = sorted(folder.glob(f"{package}_*.deb"))
    if not debs:
        raise SystemExit(f"error: no {package}_*.deb in {folder}")
    if len(debs) > 1:
        log.warning("several %s packages in %s, using %s", package, folder, debs[-1].name)
    return debs[-1]


def write_lines(path: Path, lines: list[str]) -> None:
    """Atomically write one line per item."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(line + "\n" for line in lines))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path, help="data folder; files go to OUT/text/")
    ap.add_argument("--deb-dir", type=Path, default=None,
                    help="use the .deb files in this folder instead of running apt-get download")
    ap.add_argument("--min-words", type=int, default=8, help="skip paragraphs with fewer words (default 8)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s",
                        stream=sys.stderr)
    out_dir = args.out / "text"
    manifest: dict = {"script": "scripts/prepare_text.py", "min_words": args.min_words, "packages": {},
                      "outputs": {}}
    with tempfile.TemporaryDirectory(prefix="prepare_text.") as tmp_name:
        tmp = Path(tmp_name)
        deb_dir = args.deb_dir
        if deb_dir is None:
            deb_dir = tmp / "debs"
            deb_dir.mkdir()
            run(["apt-get", "download", *(s.package for s in SOURCES)], cwd=deb_dir)
        results: dict[str, list[str]] = {}
        for src in SOURCES:
            deb = find_deb(deb_dir, src.package)
            version = run(["dpkg-deb", "-f", str(deb), "Version"]).strip()
            root = tmp / "x" / src.package
            root.mkdir(parents=True)
            run(["dpkg-deb", "-x", str(deb), str(root)])
            paras, n_files = tree_paragraphs(root / src.html_dir, args.min_words, src.exclude)
            copyright_file = root / "usr/share/doc" / src.package / "copyright"
            manifest["packages"][src.package] = {
                "version": version, "deb": deb.name, "deb_sha256": sha256(deb), "html_dir": "/" + src.html_dir,
                "html_files": n_files, "excluded_files": list(src.exclude), "licence": src.licence,
                "copyright_sha256": sha256(copyright_file) if copyright_file.is_file() else None,
            }
            results[src.output] = paras
            log.info("%s %s: %d HTML files, %d paragraphs", src.package, version, n_files, len(paras))
    finetune = set(results["finetune.txt"])
    held = results["heldout.txt"]
    results["heldout.txt"] = [p for p in held if p not in finetune]
    dropped = len(held) - len(results["heldout.txt"])
    for src in SOURCES:
        paras = results[src.output]
        path = out_dir / src.output
        write_lines(path, paras)
        manifest["outputs"][f"text/{src.output}"] = {
            "source_package": src.package, "role": src.role, "licence": src.licence,
            "sha256": sha256(path), "bytes": path.stat().st_size, "paragraphs": len(paras),
            "words": sum(len(p.split()) for p in paras),
            **({"removed_overlap_with_finetune": dropped} if src.output == "heldout.txt" else {}),
        }
        log.info("wrote %s: %d paragraphs, %d bytes", path, len(paras), path.stat().st_size)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    log.info("wrote %s", out_dir / "manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
