# Two commands do everything on a fresh clone:
#   make run   - the demo on http://127.0.0.1:8000/ (embedded default: no Redis needed)
#   make test  - the whole test suite (starts Redis on 127.0.0.1:6379 if it is not running)

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: run test setup system-deps migrate lint bench clean

run: setup migrate
	$(BIN)/daphne -b $(HOST) -p $(PORT) project.asgi:application

test: setup
	scripts/ensure-redis.sh
	node --test tests/js/
	$(BIN)/python -m pytest $(PYTEST_ARGS)

setup: system-deps $(VENV)/.installed

system-deps:
	@scripts/system-deps.sh

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

migrate: setup
	$(BIN)/python manage.py migrate --noinput

lint: setup
	$(BIN)/ruff check heartbeat_app project tests bench

clean:
	rm -rf $(VENV) db.sqlite3 staticfiles .pytest_cache
