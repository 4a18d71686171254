#!/usr/bin/env bash
# test-fast.sh: every test that needs no cluster (pytest -m "not slurm"), as an unprivileged user, with
# neither Slurm nor apt. `make test-fast` runs it after `make install`; extra arguments go to pytest.
#
# As root it drops to WOVE_TEST_USER (default wove-test, created with useradd if missing) through setpriv,
# with no supplementary groups, and a HOME and TMPDIR of that user's own that are removed afterwards; tests
# that need root (the multi-user ones) skip. No bytecode or pytest cache is written into the repository.
#
# The venv's interpreter must be one the user can run. A venv made from a Python under a private home
# (pyenv in /root) is not: then the same packages run on the system's Python of the same version, through a
# throwaway venv that adds the repository venv's site-packages.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV_PYTHON=$PWD/.venv/bin/python
TEST_USER=${WOVE_TEST_USER:-wove-test}
die() { printf 'test-fast: error: %s\n' "$*" >&2; exit 1; }

[[ -x $VENV_PYTHON ]] || die "no virtual environment: run make install first"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/wove-test-fast.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
as=(env)
python=$VENV_PYTHON

runs() { "${as[@]}" "$1" -c 'import pytest, wove' >/dev/null 2>&1; }

if [[ $EUID -eq 0 ]]; then
    if ! id -u "$TEST_USER" >/dev/null 2>&1; then
        useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$TEST_USER" ||
            die "could not create the user $TEST_USER"
    fi
    chown "$TEST_USER:" "$tmp"
    as=(setpriv --reuid="$TEST_USER" --regid="$(id -g "$TEST_USER")" --clear-groups env)
    if ! runs "$python"; then
        version=$("$VENV_PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
        site=$("$VENV_PYTHON" -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
        base=""
        for candidate in "/usr/bin/python$version" "/usr/local/bin/python$version"; do
            if [[ -x $candidate ]] && "${as[@]}" "$candidate" -c '' 2>/dev/null; then
                base=$candidate
                break
            fi
        done
        [[ -n $base ]] || die "$TEST_USER cannot run $VENV_PYTHON (its base interpreter is out of reach) and there" \
            "is no system python$version; recreate the venv from a shared interpreter:" \
            "make clean install PYTHON=/usr/bin/python3"
        "${as[@]}" "$base" -m venv --without-pip "$tmp/venv" || die "could not create a venv with $base"
        echo "import site; site.addsitedir('$site')" >"$tmp/venv/lib/python$version/site-packages/wove-venv.pth"
        python=$tmp/venv/bin/python
        runs "$python" || die "$TEST_USER cannot import pytest and wove from $site with $base"
        echo "test-fast: $VENV_PYTHON is out of $TEST_USER's reach; using $base with the packages of $site"
    fi
    echo "test-fast: running as $TEST_USER (uid $(id -u "$TEST_USER")), not root"
fi

status=0
"${as[@]}" HOME="$tmp" TMPDIR="$tmp" PYTHONDONTWRITEBYTECODE=1 PATH="$(dirname "$python"):$PATH" \
    "$python" -m pytest -q -p no:cacheprovider -m "not slurm" --durations=15 "$@" || status=$?
exit "$status"
