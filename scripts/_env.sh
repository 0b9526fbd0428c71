# Shared setup for scripts/*.sh; source it, do not run it.
#
#   source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
#   venv_setup notebook      # make .venv if missing, then pip install -e '.[notebook]'
#
# Afterwards the current directory is the repository root and $VENV/bin holds the tools.
# PYTHON=/path/to/python3 chooses the interpreter that creates .venv (only when .venv
# does not exist yet).

set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
VENV=$ROOT/.venv
cd "$ROOT"

_t0=${EPOCHREALTIME/./}
say() {  # a step, with the seconds since the script started
    local ms=$(( (${EPOCHREALTIME/./} - _t0) / 1000 ))
    printf '==> [%3d.%ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# The apt command that installs Debian packages, with sudo unless we are root.
apt_fix() {
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo "
    printf '%sapt-get update && %sapt-get install -y %s' "$sudo" "$sudo" "$*"
}

# Can this interpreter create a working virtualenv? (Debian splits ensurepip, which
# `python3 -m venv` needs, into the python3-venv package.)
_can_venv() {
    "$1" -c 'import ensurepip, venv, sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null
}

_pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        command -v -- "$PYTHON" >/dev/null || die "PYTHON=$PYTHON: not found"
        _can_venv "$PYTHON" \
            || die "PYTHON=$PYTHON cannot create a virtualenv (needs Python >= 3.11 with venv and ensurepip)"
        echo "$PYTHON"
        return
    fi
    # Prefer Debian's /usr/bin/python3. When these scripts run as root, symbi-jupyter
    # runs native (tier None) code as the unprivileged user `nobody`, which must be able
    # to execute the interpreter; a venv's python is a symlink to the interpreter it was
    # made from, so a venv made from a Python under /root (pyenv, say) cannot run a
    # single native cell. /usr/bin/python3 is executable by everyone.
    if [ -x /usr/bin/python3 ]; then
        if _can_venv /usr/bin/python3; then
            echo /usr/bin/python3
            return
        fi
        if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null && command -v dpkg >/dev/null; then
            die "/usr/bin/python3 has no venv support (Debian package python3-venv). Fix: $(apt_fix python3-venv)"
        fi
    fi
    if command -v python3 >/dev/null && _can_venv python3; then
        command -v python3
        return
    fi
    if command -v apt-get >/dev/null; then
        die "no Python >= 3.11 with venv support found. Fix: $(apt_fix python3 python3-venv)"
    fi
    die "no Python >= 3.11 with venv support found; install one, or set PYTHON=/path/to/python3"
}

# Warn early when native code could not run: as root, the interpreter must be
# executable by `nobody` (symbi-jupyter would refuse each native cell with this advice).
_check_interpreter_reachable() {
    [ "$(id -u)" -eq 0 ] || return 0
    local blocked
    blocked=$("$VENV/bin/python" - <<'EOF'
import os, sys
path = os.path.realpath(sys.executable)
parts = [path]
while parts[-1] != "/":
    parts.append(os.path.dirname(parts[-1]))
print(next((p for p in reversed(parts) if not os.stat(p).st_mode & 0o001), ""))
EOF
)
    if [ -n "$blocked" ]; then
        printf 'warning: %s is closed to other users, so native cells cannot run as `nobody`.\n' "$blocked" >&2
        printf '         Recreate .venv from /usr/bin/python3: rm -rf .venv, then run this script again.\n' >&2
    fi
}

# venv_setup EXTRA: create .venv if missing, then pip install -e ".[EXTRA]" (quietly).
venv_setup() {
    local extra=$1 python
    if [ ! -x "$VENV/bin/python" ]; then
        [ ! -e "$VENV" ] || die "$VENV exists but has no bin/python; remove it and run again"
        python=$(_pick_python)
        say "creating .venv with $python ($("$python" -c 'import sys; print(sys.version.split()[0])'))"
        "$python" -m venv "$VENV"
    fi
    _check_interpreter_reachable
    say "installing symbi-jupyter[$extra] into .venv"
    PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
        "$VENV/bin/python" -m pip install --quiet --editable ".[$extra]"
}

# notebook_env: the environment the notebooks' stored outputs were recorded in, and
# that nbval compares them in: the stable rendering, no SYMBIONT_* variables but one
# that pins the CPU-core ceiling (it defaults to this host's core count, which would
# differ between machines), and no Jupyter or IPython configuration or state of the
# user's. Unit tests under tests/
# remove the stable-rendering switch again for themselves (tests/conftest.py).
notebook_env() {
    NB_SCRATCH=$(mktemp -d)
    trap 'rm -rf "$NB_SCRATCH"' EXIT
    mkdir "$NB_SCRATCH/jupyter" "$NB_SCRATCH/ipython" "$NB_SCRATCH/state"
    unset $(compgen -e | grep '^SYMBIONT_' || true) JUPYTER_CONFIG_PATH
    export SYMBI_JUPYTER_STABLE_OUTPUT=1 SYMBIONT_NATIVE_MAX_CPU_CORES=1 \
        JUPYTER_CONFIG_DIR=$NB_SCRATCH/jupyter \
        IPYTHONDIR=$NB_SCRATCH/ipython XDG_STATE_HOME=$NB_SCRATCH/state
    # Each notebook names its kernel (python3, or symbi for 05): both kernelspecs are
    # installed for this environment's Python, ahead of any the user has.
    { "$VENV/bin/python" -m ipykernel install --prefix "$NB_SCRATCH/kernels" &&
      "$VENV/bin/symbi-jupyter" install-kernel --prefix "$NB_SCRATCH/kernels"; } >/dev/null 2>&1 ||
        die "could not install the python3 and symbi kernelspecs into $NB_SCRATCH/kernels"
    export JUPYTER_PATH=$NB_SCRATCH/kernels/share/jupyter
}
