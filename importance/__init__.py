"""Parameter importance engine: estimate (gradient hooks) → artifact (.safetensors + .json) →
analyse (layers, modules, rows / columns, shift) → deactivate (zero top / bottom / random, PPL).

Modules: `estimate`, `artifact`, `deactivate`, `analyse` (pure functions), `plots` (matplotlib
figures); CLI commands in `cli_importance`, `cli_deactivate`, `cli_compare` (wired by
`speech-llama`, or run as ``python -m importance.cli COMMAND``).
"""

from speech_llama.parameters import layer_and_module

from .artifact import (
    DEFAULT_PARAMS,
    ImportanceArtifact,
    build_summary,
    check_against_model,
    load_artifact,
    save_artifact,
    summarize,
)
from .deactivate import build_selection, select_extreme, select_random, zeroed
from .estimate import EstimateResult, estimate_importance, select_parameters, sharded_batches

__all__ = [
    "DEFAULT_PARAMS",
    "EstimateResult",
    "ImportanceArtifact",
    "build_selection",
    "build_summary",
    "check_against_model",
    "estimate_importance",
    "layer_and_module",
    "load_artifact",
    "save_artifact",
    "select_extreme",
    "select_parameters",
    "select_random",
    "sharded_batches",
    "summarize",
    "zeroed",
]
