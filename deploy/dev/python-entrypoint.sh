#!/bin/sh
# Development entrypoint (docker-compose.dev.yml): install the bind-mounted source editable
# into the python_venv volume when pyproject.toml or constraints.txt changed, then run the
# capstan role given as arguments, restarting it whenever a Python file under src/ changes.
set -eu
cd /app
stamp=/app/.venv/.capstan-installed
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -x /app/.venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "capstan-dev: installing the source into /app/.venv" >&2
  /usr/local/bin/python -m venv /app/.venv
  /app/.venv/bin/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
  echo "$want" >"$stamp"
fi
case "${1:-api}" in
  migrate) exec capstan "$@" ;;  # one-shot: no reloader
  *) exec watchfiles --filter python "capstan $*" /app/src ;;
esac
