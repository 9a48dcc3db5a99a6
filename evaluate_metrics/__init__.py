"""Local `evaluate` metric modules of speech-llama, loadable offline by path.

Each metric lives in its own folder (`<name>/<name>.py` + a metric card `README.md`), the
layout `evaluate.load(path)` expects and the one a Hub metric Space uses.
"""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent


def metric_path(name: str) -> Path:
    """Absolute path of the folder holding the metric `name`; raise if there is none."""
    folder = METRICS_DIR / name
    script = folder / f"{name}.py"
    if not script.is_file():
        available = sorted(
            child.name for child in METRICS_DIR.iterdir() if (child / f"{child.name}.py").is_file()
        )
        raise FileNotFoundError(f"No metric {name!r} in {METRICS_DIR}; available: {available}")
    return folder


def load_metric(name: str, **kwargs):
    """Load a local metric with `evaluate.load`, by absolute path so the working directory
    does not matter and nothing is looked up on the Hub.

    Extra keyword arguments go to `evaluate.load` (e.g. `keep_in_memory=True`).
    """
    import evaluate  # imported here so that listing metric paths does not need `evaluate`

    return evaluate.load(str(metric_path(name)), **kwargs)
