# Two commands for a fresh machine: `make run` (the default job and its report) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
SNAKEMAKE := $(BIN)/snakemake
export PYTHONPATH := $(CURDIR)/workflow/scripts
# Keep BLAS/OpenMP to the cores Snakemake gives each job.
export OMP_NUM_THREADS ?= 2

.PHONY: install run demo-data report test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

demo-data: install
	$(BIN)/python -m snakescope.synthetic resources/demo/cells --n-images 400

run: install demo-data
	$(SNAKEMAKE) --profile profiles/local
	$(SNAKEMAKE) --profile profiles/local --report results/report.html
	@echo "Report: results/report.html"

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check workflow/scripts tests bench
	$(BIN)/snakefmt --check workflow
	$(SNAKEMAKE) --lint

clean:
	rm -rf results logs benchmarks .snakemake
