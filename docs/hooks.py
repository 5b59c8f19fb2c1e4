"""MkDocs hook: the repository's pages outside ``docs/`` in the site, their links kept working.

The pages are written for GitHub, with links relative to where each file is in the repository.
The site holds ``docs/`` at its root, plus the repository's other pages and what they link to
(pictures, LICENSE) under the paths of :func:`site_path`; every relative link of every page is
resolved in the repository, then rewritten relative to the page's place in the site, so that
MkDocs checks it (``strict``: a broken link or anchor fails the build).
"""

from __future__ import annotations

import os
import posixpath
import re

from mkdocs.structure.files import File, Files, InclusionLevel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRA_PAGES = {"README.md": "overview.md", "CHANGELOG.md": "changelog.md", "experiments/README.md": None}
"""Repository pages added to the site, and their site path when it is not their repository path."""

LINK = re.compile(r"(\]\()([^)\s]+)(\))")
_repository_paths: dict[str, str] = {}
"""The repository path of each page of the site, by site path."""


def site_path(repository_path: str) -> str:
    """Where a repository file is in the site."""
    if repository_path.startswith("docs/"):
        return repository_path[len("docs/"):]
    mapped = EXTRA_PAGES.get(repository_path)
    return mapped or repository_path


def _relative_links(repository_path: str) -> list[str]:
    """The repository paths that the page at ``repository_path`` links to."""
    with open(os.path.join(ROOT, repository_path), encoding="utf-8") as page:
        text = page.read()
    targets = []
    for _, target, _ in LINK.findall(text):
        target = target.split("#", 1)[0]
        if target and "://" not in target and not target.startswith("mailto:"):
            targets.append(posixpath.normpath(posixpath.join(posixpath.dirname(repository_path), target)))
    return targets


def on_files(files: Files, config) -> Files:
    _repository_paths.clear()
    for file in files:
        _repository_paths[file.src_uri] = f"docs/{file.src_uri}"
    pages = [path for path in EXTRA_PAGES]
    linked = {target for page in [*pages, *(f"docs/{uri}" for uri in list(_repository_paths))]
              if page.endswith(".md") for target in _relative_links(page)}
    for path in sorted(set(pages) | linked):
        destination = site_path(path)
        if path.startswith("docs/") or not os.path.isfile(os.path.join(ROOT, path)):
            continue  # in the site already, or missing: MkDocs reports the broken link
        if files.get_file_from_path(destination) is None:
            files.append(File.generated(config, destination, abs_src_path=os.path.join(ROOT, path),
                                        inclusion=InclusionLevel.INCLUDED))
            _repository_paths[destination] = path
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    here = _repository_paths.get(page.file.src_uri, f"docs/{page.file.src_uri}")

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("#", "mailto:")):
            return match.group(0)
        path, _, anchor = target.partition("#")
        repository = posixpath.normpath(posixpath.join(posixpath.dirname(here), path))
        relative = posixpath.relpath(site_path(repository), posixpath.dirname(page.file.src_uri) or ".")
        return f"{match.group(1)}{relative}{'#' + anchor if anchor else ''}{match.group(3)}"

    return LINK.sub(rewrite, markdown)
