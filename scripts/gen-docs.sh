#!/bin/sh
# Regenerate the option documentation from the built binaries: see
# scripts/gen_docs.py (what it writes, from what, and why in one fixed
# environment). This name stays because the generated files and the
# README name it.
#
# usage: scripts/gen-docs.sh [--check] [BUILD_DIR]
exec /usr/bin/python3 "$(dirname "$0")/gen_docs.py" "$@"
