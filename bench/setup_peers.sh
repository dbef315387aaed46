#!/usr/bin/env bash
# Make the benchmark's environments; quick and silent when they are already up to date.
#
#   bench/.venv-peers    MLServer 1.7.1 + mlserver-sklearn, mlflow 3.17.2, uvicorn, gunicorn,
#                        granian, py-spy, pyinstrument (bench/requirements-peers.txt, frozen).
#   bench/.venv-servers  Modelhost's own requirements.txt plus gunicorn and uvicorn, so the server-choice
#                        run can serve the platform under each candidate server (bench/server_choice.py).
#   .venv                the project's runtime environment (`make install`), if missing.
#   wrk                  the load generator, from Debian's packages.
#
# Each venv is rebuilt only when its requirement files change (a stamp holds their hash).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
python="${PYTHON:-python3}"

ensure_venv() {  # ensure_venv <dir> <requirement files...>
    local dir="$1"; shift
    local want
    want="$(cat "$@" | sha256sum | cut -c1-16)"
    if [[ -x "$dir/bin/python" && -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$want" ]]; then
        return 0
    fi
    echo "setup_peers: building $dir (a few minutes the first time)" >&2
    [[ -x "$dir/bin/python" ]] || "$python" -m venv "$dir"
    local args=()
    for file in "$@"; do args+=(-r "$file"); done
    local log="$dir/.install.log"
    if ! "$dir/bin/python" -m pip install --disable-pip-version-check -q "${args[@]}" >"$log" 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" "$log" >&2
        exit 1
    fi
    echo "$want" > "$dir/.stamp"
}

if ! command -v wrk >/dev/null 2>&1; then
    echo "setup_peers: installing wrk" >&2
    apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }
fi

if [[ ! -x "$root/.venv/bin/granian" ]]; then
    make -C "$root" install >&2
fi

ensure_venv "$here/.venv-peers" "$here/requirements-peers.txt"
ensure_venv "$here/.venv-servers" "$root/requirements.txt" "$here/requirements-servers.txt"
