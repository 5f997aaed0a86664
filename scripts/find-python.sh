#!/bin/sh
# Print the path of a Python >= 3.12, or a one-line message on stderr and exit 1.
# Order: $PYTHON if set, python3.13 / python3.12 on PATH, then pyenv's installed versions.
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
if [ -n "${PYTHON:-}" ]; then
  if ok "$PYTHON"; then command -v "$PYTHON"; exit 0; fi
  echo "PYTHON=$PYTHON is not a working Python >= 3.12; unset it or point it at python3.12 or newer" >&2
  exit 1
fi
for p in python3.13 python3.12; do
  if ok "$p"; then command -v "$p"; exit 0; fi
done
root="${PYENV_ROOT:-$HOME/.pyenv}"
for d in $(ls -d "$root"/versions/3.1[2-9]* 2>/dev/null | sort -t. -k2,2nr -k3,3nr); do
  if ok "$d/bin/python"; then echo "$d/bin/python"; exit 0; fi
done
echo "bayesfed needs Python >= 3.12: install python3.12 or python3.13 (or set PYTHON=/path/to/python3.12)" >&2
exit 1
