"""CLINC150's JSON as plain text files, one query per line, for `data.dataset: text`; prints the
folder.

    python scripts/clinc150_text.py ../shared/data/clinc150/data_full.json data/clinc150

writes train.txt, valid.txt and test.txt (the in-scope `train`, `val` and `test` queries, the
corpus of configs/clinc150.yaml) and oos_train.txt, oos_valid.txt and oos_test.txt (the
out-of-scope queries; `oos_test.txt` against `test.txt` is the benchmark's pair), each query as
the file has it, whitespace runs collapsed. A file that is not CLINC150's shape (an object with
those six keys, each a list of [text, intent] pairs) is one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from textvae.files import atomic_write_text

SPLITS = {"train": "train.txt", "val": "valid.txt", "test": "test.txt",
          "oos_train": "oos_train.txt", "oos_val": "oos_valid.txt", "oos_test": "oos_test.txt"}


def read_clinc150(path: Path) -> dict[str, list[str]]:
    """The queries of each split of CLINC150's data_full.json (or a file of the same shape)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SystemExit(f"clinc150_text: cannot read {path}: {error}") from None
    if not isinstance(data, dict) or not set(SPLITS) <= set(data):
        raise SystemExit(f"clinc150_text: {path} is not CLINC150's JSON: it needs the keys {', '.join(SPLITS)}")
    queries = {}
    for split in SPLITS:
        rows = data[split]
        if not isinstance(rows, list) or not all(isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)
                                                 for row in rows):
            raise SystemExit(f"clinc150_text: {path}: {split} must be a list of [text, intent] pairs")
        queries[split] = [" ".join(text.split()) for text, _ in rows if text.strip()]
    return queries


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="CLINC150's data_full.json")
    parser.add_argument("out", type=Path, help="folder for the text files")
    args = parser.parse_args(argv)
    queries = read_clinc150(args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, name in SPLITS.items():
        atomic_write_text(args.out / name, "".join(f"{line}\n" for line in queries[split]))
    print(args.out)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as error:
        if isinstance(error.code, str):
            print(error.code, file=sys.stderr)
            sys.exit(2)
        raise
