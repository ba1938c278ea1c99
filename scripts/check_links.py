"""Check that every relative link in the Markdown documentation resolves.

    python scripts/check_links.py      # exit 1, naming them, if any link is broken

Reads README.md, docs/**/*.md and scripts/README.md. A link `[text](target)` or an image
`![alt](target)` whose target is not a URL must name an existing file or directory (relative to
the Markdown file); a `#fragment` must match a heading of the file it points to, in GitHub's
anchor style. Links inside code blocks and inline code are ignored. Standard library only.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of `path`: lower case, punctuation dropped, spaces to '-'."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    found = set()
    for line in text.splitlines():
        match = re.match(r"#+\s+(.*)", line)
        if match:
            heading = match.group(1).strip().lower().replace("`", "")
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", heading)))
    return found


def broken_links(path: Path) -> list[str]:
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text(encoding="utf-8")))
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{path.relative_to(ROOT)}: {target}: no such file")
        elif fragment and destination.suffix == ".md" and fragment not in anchors(destination):
            problems.append(f"{path.relative_to(ROOT)}: {target}: no heading #{fragment}")
    return problems


def main() -> int:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "scripts" / "README.md"]
    problems = [problem for path in files if path.exists() for problem in broken_links(path)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
