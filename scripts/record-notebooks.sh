#!/usr/bin/env bash
# Re-execute notebooks/*.ipynb in place, storing the outputs that scripts/test.sh
# compares with nbval. Run it after editing a notebook, as root on Linux with writable
# cgroups (like CI), and review the diff before committing.
#
#   bash scripts/record-notebooks.sh [NOTEBOOK...]     (default: every notebook)
#
# The kernel gets the environment scripts/test.sh gives it under nbval (notebook_env
# in _env.sh): the stable rendering, no SYMBIONT_* variables, no config files.
source "$(dirname -- "${BASH_SOURCE[0]}")/_env.sh"

venv_setup test
[ "$(id -u)" -eq 0 ] || say "warning: not root; CI compares these outputs as root"

notebook_env

if [ "$#" -eq 0 ]; then set -- notebooks/*.ipynb; fi
for notebook in "$@"; do
    say "recording $notebook"
    "$VENV/bin/jupyter" nbconvert --log-level=WARN --execute --to notebook --inplace \
        --ExecutePreprocessor.record_timing=False \
        "$notebook"
done
