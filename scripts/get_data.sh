#!/usr/bin/env bash
# Make PTB available in data/ptb from a local copy (default: ../shared/data/ptb), checking MD5 sums.
# Usage: scripts/get_data.sh [SOURCE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source_dir="${1:-../shared/data/ptb}"
mkdir -p data/ptb
for split in train valid test; do
  file="ptb.${split}.txt"
  if [ ! -e "data/ptb/${file}" ]; then
    if [ ! -f "${source_dir}/${file}" ]; then
      echo "get_data: ${source_dir}/${file} not found; textvae downloads PTB itself when online" >&2
      exit 1
    fi
    ln -s "$(cd "${source_dir}" && pwd)/${file}" "data/ptb/${file}"
  fi
done
(cd data/ptb && md5sum -c --quiet <<'SUMS'
f26c4b92c5fdc7b3f8c7cdcb991d8420  ptb.train.txt
aa0affc06ff7c36e977d7cd49e3839bf  ptb.valid.txt
8b80168b89c18661a38ef683c0dc3721  ptb.test.txt
SUMS
)
echo "get_data: data/ptb ready" >&2
