#!/usr/bin/env bash
# The second leg of the version matrix: Django 6 on Python 3.12 (else 3.13) from pyenv
# or the PATH, or on $PYTHON_DJ6, in its own virtualenv (.venv-dj6),
# with the rest of requirements.txt as pinned. Runs the fast part of the suite: unit
# and consumer tests, no server processes (-m "not e2e"). The first leg (Django 5.2
# LTS on the default Python) is `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV_DJ6:-.venv-dj6}
DJANGO_SPEC=${DJANGO_SPEC:-Django>=6,<7}

# 3.12 first: on 3.13 json parses 2,000-deep nesting that older versions refuse, and
# tests/test_protocol.py::test_too_deep_nesting_within_the_size_limit_is_invalid_json
# expects the refusal.
python=${PYTHON_DJ6:-}
for minor in 3.12 3.13; do
  [ -n "$python" ] && break
  if command -v pyenv >/dev/null 2>&1; then
    version=$(pyenv versions --bare 2>/dev/null | grep -E "^${minor//./\\.}\.[0-9]+$" \
      | sort -V | tail -n 1 || true)
    if [ -n "$version" ]; then
      python="$(pyenv root)/versions/$version/bin/python"
      break
    fi
  fi
  if command -v "python$minor" >/dev/null 2>&1; then
    python=$(command -v "python$minor")
    break
  fi
done
if [ -z "$python" ]; then
  case "${CI:-}" in
    1|true|TRUE|True|yes|YES)
      # Under CI a leg that cannot run is a failed leg, as a skipped test is a failed test.
      echo "test-matrix: no Python 3.12 or 3.13 found (pyenv, python3.12/python3.13 on the" \
        "PATH, or \$PYTHON_DJ6); CI must run the Django 6 leg: install one." >&2
      exit 1
      ;;
  esac
  echo "test-matrix: no Python 3.12 or 3.13 on this machine; Django 6 needs one, leg not run."
  exit 0
fi

stamp="$VENV/.installed"
wanted="$("$python" -V 2>&1) $DJANGO_SPEC $(sha256sum requirements.txt | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
  rm -rf "$VENV"
  "$python" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  grep -viE '^django([<>=!~ ]|$)' requirements.txt > "$VENV/requirements-dj6.txt"
  "$VENV/bin/python" -m pip install --quiet -r "$VENV/requirements-dj6.txt" "$DJANGO_SPEC"
  echo "$wanted" > "$stamp"
fi

echo "test-matrix: $("$VENV/bin/python" -V), Django $("$VENV/bin/python" -m django --version)"
scripts/ensure-redis.sh
"$VENV/bin/python" -m pytest -m "not e2e" -p no:cacheprovider "$@"
