# Sourced by the scripts: find a Python >= 3.12 (PATH, then pyenv), create .venv, install the project.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

find_python() {
    local c
    for c in python3.13 python3.12 python3; do
        if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
            command -v "$c"; return 0
        fi
    done
    local root="${PYENV_ROOT:-$HOME/.pyenv}"
    command -v pyenv >/dev/null 2>&1 && root="$(pyenv root)"
    for c in "$root"/versions/3.13*/bin/python3 "$root"/versions/3.12*/bin/python3; do
        if [ -x "$c" ]; then echo "$c"; return 0; fi
    done
    return 1
}

ensure_venv() {
    local extras="$1"
    local stamp=".venv/.installed-$extras"
    if [ ! -x .venv/bin/python ]; then
        local py
        py="$(find_python)" || { echo "apim-mi needs Python >= 3.12 (mitmproxy 12); none found on PATH or in pyenv." >&2; exit 2; }
        echo "==> creating .venv with $py" >&2
        "$py" -m venv .venv
    fi
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        echo "==> installing apim-mi[$extras] into .venv" >&2
        .venv/bin/python -m pip install -q --upgrade pip >&2
        .venv/bin/python -m pip install -q -e ".[$extras]" >&2
        touch "$stamp"
    fi
    export PATH="$ROOT/.venv/bin:$PATH"
}

ensure_debian_packages() {
    local missing=() p
    for p in "$@"; do command -v "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
    if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" -eq 0 ] || [ -n "$sudo" ]; }; then
        echo "==> installing Debian packages: ${missing[*]}" >&2
        $sudo apt-get update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
            || echo "warning: could not install ${missing[*]}; tests needing them will be skipped" >&2
    else
        echo "warning: ${missing[*]} not installed and apt-get unavailable; tests needing them will be skipped" >&2
    fi
}

# Builds the wheel and installs it into a fresh venv outside the checkout (what `pip install apim-mi` gives an
# operator); prints the venv's path. tests/test_installed.py runs the demo and mitmdump from it.
build_installed_venv() {
    local py dir
    py="$(find_python)" || { echo "apim-mi needs Python >= 3.12" >&2; return 2; }
    dir="${TMPDIR:-/tmp}/apim-mi-installed-$(id -u)"
    rm -rf "$dir" && mkdir -p "$dir/dist"
    echo "==> building the wheel and installing it into a fresh venv at $dir/venv" >&2
    .venv/bin/python -m pip wheel -q --no-deps -w "$dir/dist" . >&2
    "$py" -m venv "$dir/venv"
    "$dir/venv/bin/python" -m pip install -q "$dir"/dist/apim_mi-*.whl >&2
    echo "$dir/venv"
}
