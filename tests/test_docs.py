"""The README front page stays short, and what the README and the guides point to exists.

mkdocs' strict build (.ci/run) checks the links between the guides. It does not see the README (outside
docs/), nor a file named in backticks, which is how the docs refer to code (a link out of docs/ makes
mkdocs warn): these tests check both.
"""
from __future__ import annotations

import functools
import glob
import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRONT_PAGE_LINES = 200
# Files of the authors' (and NNI's) repositories that the docs name as sources, not files of this one.
ELSEWHERE = {"rr/exp_resrep.py", "models/rmnext.py", "models/rmrepvgg.py", "train_pruning.py", "mask_conflict.py",
             "amc_search.py", "amc_train.py"}   # the last two: the authors' RM+AMC scripts


def doc_files(root: str = ROOT) -> list[str]:
    """README.md and the guides (docs/*.md; docs/incoming/ is text not yet placed in a guide)."""
    return [os.path.join(root, "README.md"), *sorted(glob.glob(os.path.join(root, "docs", "*.md")))]


def _prose(text: str) -> str:
    """The text outside fenced code blocks (their paths are commands' arguments and outputs)."""
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)


def file_paths(text: str) -> set[str]:
    """Backticked spans that look like one file's path: one token with a / and an extension in its last
    part, or ending in .py/.yaml/.sh/.md; `file::test` and `file:line` name the file. Placeholders
    (<run>, *, {a,b}, $VAR, an upper-case first folder: RUN/, DIR/) and settings (key=path) are not paths."""
    paths = set()
    for span in re.findall(r"`([^`\n]+)`", _prose(text)):
        path = re.sub(r"(::|:\d).*$", "", span.strip())
        if not re.fullmatch(r"[\w./-]+", path) or path.startswith(("-", ".venv/")) or re.match(r"[A-Z]+/", path):
            continue
        name = path.rsplit("/", 1)[-1]
        if ("/" in path and re.search(r"\w\.[A-Za-z]\w*$", name)) or path.endswith((".py", ".yaml", ".sh", ".md")):
            paths.add(path)
    return paths


def _exists(path: str, doc: str) -> bool:
    """A path names a file of the repo (from its root or the doc's folder), or a tool's output: one git
    ignores (checkpoints/, deploy/, outputs/, ...). A bare name of code (`walker.py`) is one of the repo's
    files of that name; other bare names (`config.yaml`, `report.md`) are files a tool writes in a run."""
    if "/" not in path:
        return not path.endswith((".py", ".sh")) or path in _tracked_names()
    here = [os.path.join(ROOT, path), os.path.join(os.path.dirname(doc), path)]
    return any(os.path.exists(p) for p in here) or _ignored(path)


@functools.cache
def _tracked_names() -> frozenset[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return frozenset(os.path.basename(f) for f in files.split())


def _ignored(path: str) -> bool:
    """A path git ignores is a tool's output (checkpoints/, deploy/, outputs/, ...), not a file of the repo."""
    return subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT).returncode == 0


def test_readme_is_a_front_page():
    with open(os.path.join(ROOT, "README.md")) as f:
        n = len(f.read().splitlines())
    assert n <= FRONT_PAGE_LINES, f"README.md has {n} lines; the front page keeps to {FRONT_PAGE_LINES}: move text to a guide"


def test_file_paths_in_backticks_exist():
    missing = []
    for doc in doc_files():
        with open(doc) as f:
            paths = file_paths(f.read())
        for path in sorted(paths - ELSEWHERE):
            if not _exists(path, doc):
                missing.append(f"{os.path.relpath(doc, ROOT)}: `{path}`")
    assert not missing, "backticked paths that do not exist:\n" + "\n".join(missing)


def test_file_paths_are_recognised():
    text = ("`engine/cli.py` `tests/test_data.py::test_x` `README.md` `conf/<name>.yaml` `resume=path/last.pt` "
            "`benchmarks/results/` `torch.utils.flop_counter` `bash scripts/test.sh` `a/b.pt` `RUN/best.pt`\n```\n`c/d.py`\n```")
    assert file_paths(text) == {"engine/cli.py", "tests/test_data.py", "README.md", "a/b.pt"}


def _github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading (where the README is read): lower case, punctuation dropped,
    each space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: str) -> set[str]:
    with open(path) as f:
        return {_github_slug(h) for h in re.findall(r"^#+ (.+)$", _prose(f.read()), re.M)}


def test_readme_links_resolve():
    """The README's relative links (to the guides, to its own sections) name existing files and headings."""
    with open(os.path.join(ROOT, "README.md")) as f:
        links = re.findall(r"\]\(([^)\s]+)\)", _prose(f.read()))
    broken = []
    for link in links:
        if re.match(r"\w+://", link):
            continue
        target, _, anchor = link.partition("#")
        path = os.path.join(ROOT, target or "README.md")
        if not os.path.exists(path) or (anchor and anchor not in _anchors(path)):
            broken.append(link)
    assert not broken, f"README links that resolve to no file or heading: {broken}"
