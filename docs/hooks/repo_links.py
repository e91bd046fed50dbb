"""MkDocs hook: the docs link to files outside docs/ (plots/, reports/, bench/README.md) with ordinary relative links
such as `../plots/s42/p09/learning_curves.png`, which work on GitHub and in an editor. The site gets each such file under
`_repo/<its path in the repository>`, and the links are rewritten to point there, so `mkdocs build --strict`
checks them like any other link and nothing is copied into docs/."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

PREFIX = "_repo"
# [text](target) and ![alt](target); the target has no spaces and no scheme
LINK = re.compile(r"(\]\()([^)\s#]+)(#[^)\s]*)?(\))")


def _local(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith(("/", "#"))


def _site_uri(path: Path, docs: Path, repo: Path) -> str | None:
    """Where a file of the repository is in the site: its place under docs/, or under _repo/."""
    if path.is_relative_to(docs):
        return path.relative_to(docs).as_posix()
    if path.is_relative_to(repo) and path.exists():
        return f"{PREFIX}/{path.relative_to(repo).as_posix()}"
    return None


def _targets(markdown: str, page: Path) -> list[Path]:
    return [(page.parent / m[2]).resolve() for m in LINK.finditer(markdown) if _local(m[2])]


def _roots(config) -> tuple[Path, Path]:
    return Path(config.docs_dir).resolve(), Path(config.config_file_path).resolve().parent


def on_files(files: Files, config) -> Files:
    docs, repo = _roots(config)
    queue = [Path(f.abs_src_path) for f in files.documentation_pages()]
    seen: set[Path] = set()
    while queue:
        page = queue.pop()
        for target in _targets(page.read_text(encoding="utf-8"), page):
            if target in seen or target.is_relative_to(docs) or not target.is_file():
                continue
            seen.add(target)
            uri = _site_uri(target, docs, repo)
            if uri is None:
                continue
            files.append(File.generated(config, uri, abs_src_path=str(target)))
            if target.suffix == ".md":
                queue.append(target)
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs, repo = _roots(config)
    source = Path(page.file.abs_src_path).resolve()
    here = posixpath.dirname(page.file.src_uri)

    def rewrite(m: re.Match) -> str:
        if not _local(m[2]):
            return m[0]
        uri = _site_uri((source.parent / m[2]).resolve(), docs, repo)
        if uri is None:
            return m[0]
        return f"{m[1]}{posixpath.relpath(uri, here or '.')}{m[3] or ''}{m[4]}"

    return LINK.sub(rewrite, markdown)
