# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing. torch is pinned to the CPU wheel first so
# that no other requirement pulls a multi-GB CUDA build.
PY := .venv/bin/python
VENV_STAMP := .venv/.helixplan-installed

.PHONY: demo test lint venv clean bench fuzz golden

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[hf,dev]"
	touch $(VENV_STAMP)

demo: venv
	$(PY) -m planner inspect examples/llama.py --model-arg preset=llama3-8b --batch 32 --context 8k
	$(PY) -m planner plan examples/llama.py --model-arg preset=llama3-8b --hardware h100-sxm \
		--gpus 8 --workload decode --batch 32 --context 8k --out build/demo-llama3-8b
	$(PY) -m planner explain build/demo-llama3-8b/plan.json
	$(PY) -m planner plan examples/llama.py --gpus 4 --workload decode --batch 8 --context 64 \
		--force 'layers.*.attention=tp(tp=2)' --out build/demo-tiny
	$(PY) -m planner verify build/demo-tiny --nproc 4 --steps 4

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest -n 2 -q tests

# The property-based planner fuzz with its long profile (hundreds of drawn models; CI runs
# the bounded `ci` profile as part of `make test`).
fuzz: venv
	HYPOTHESIS_PROFILE=fuzz $(PY) -m pytest -q -p no:logging tests/test_fuzz_plans.py

# Regenerate tests/golden/ after an intended change to plans or programs; commit the diff.
golden: venv
	HELIXPLAN_UPDATE_GOLDEN=1 $(PY) -m pytest -q -p no:logging tests/test_golden_plans.py

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) benchmarks/inspect_time.py
	$(PY) benchmarks/plan_time.py

clean:
	rm -rf .venv build .pytest_cache
