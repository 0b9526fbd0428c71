#!/usr/bin/env bash
# Run the tour notebook headless and write it, executed, to out/00-tour.{ipynb,html}.
#
#   bash scripts/tour.sh
#
# Creates .venv on first use (see scripts/_env.sh; PYTHON=... picks the interpreter).
# The outputs show real figures (wall time, CPU, peak memory), unlike the copy stored
# in notebooks/, which is recorded with the stable rendering for the notebook tests.
source "$(dirname -- "${BASH_SOURCE[0]}")/_env.sh"

venv_setup notebook

out=$ROOT/out
mkdir -p "$out"
say "executing notebooks/00-tour.ipynb"
# Real figures: drop the stable-rendering switch if the caller's environment has it.
# No --allow-errors: the one cell that fails on purpose is tagged raises-exception,
# any other error stops this script.
# The kernel's channels are unix sockets in a directory of this user's alone (mode
# 0700), not TCP ports any local user could connect to; an absolute path, as the
# kernel runs in notebooks/.
channels=$(mktemp -d)
trap 'rm -rf "$channels"' EXIT
env -u SYMBI_JUPYTER_STABLE_OUTPUT \
    "$VENV/bin/jupyter" nbconvert --log-level=WARN --execute --to notebook \
    --KernelManager.transport=ipc --KernelManager.ip="$channels/kernel" \
    --output-dir "$out" --output 00-tour notebooks/00-tour.ipynb
# Convert the executed copy; nothing runs a second time.
"$VENV/bin/jupyter" nbconvert --log-level=WARN --to html \
    --output-dir "$out" --output 00-tour "$out/00-tour.ipynb"

say "done:"
printf '    %s\n' "$out/00-tour.ipynb" "$out/00-tour.html"
