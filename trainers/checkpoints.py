"""Which checkpoint a run resumes from: the latest *complete* one.

`Trainer` writes a checkpoint folder file by file — weights, optimizer, scheduler, RNG states, and
`trainer_state.json` last — so a kill while `checkpoint-N` is being written leaves a folder with
only some of them (often just `config.json` and the remote-code files). transformers'
`get_last_checkpoint` picks the highest N whatever its state, and resuming then fails. Here a
checkpoint counts as complete when its `trainer_state.json` parses, names its own step, and the
weights (and, unless the run saves only the model, the optimizer and scheduler) are there.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

logger = logging.getLogger("trainers")

CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Name prefixes of what Trainer writes before trainer_state.json: the weights (plain, sharded, LoRA
# adapter, FSDP folder, DeepSpeed global_step folder) and the optimizer state (file or FSDP folder).
WEIGHT_PREFIXES = ("model", "pytorch_model", "adapter_model", "global_step")
OPTIMIZER_PREFIXES = ("optimizer", "global_step")


class ResumeError(ValueError):
    """No checkpoint to resume from; the message says why."""


def incomplete_reason(folder: Path, save_only_model: bool = False) -> str | None:
    """Why `folder` is not a complete checkpoint, or None when it is."""
    state_path = folder / "trainer_state.json"
    if not state_path.is_file():
        return "no trainer_state.json (written last)"
    try:
        state = json.loads(state_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "trainer_state.json is truncated"
    match = CHECKPOINT.match(folder.name)
    if match and state.get("global_step") != int(match.group(1)):
        return f"trainer_state.json is for step {state.get('global_step')}"
    names = [path.name for path in folder.iterdir()]
    if not any(name.startswith(WEIGHT_PREFIXES) for name in names):
        return "no weights"
    if not save_only_model and not any(name.startswith(OPTIMIZER_PREFIXES) for name in names):
        return "no optimizer state"
    return None


def checkpoints_newest_first(output_dir: Path) -> list[Path]:
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), path) for path in output_dir.iterdir()
             if path.is_dir() and (m := CHECKPOINT.match(path.name))]
    return [path for _, path in sorted(found, reverse=True)]


def resolve_resume(resume_from_checkpoint, output_dir: str | Path, save_only_model: bool = False) -> str | None:
    """The checkpoint folder to resume from (None: start fresh).

    `True` (from `--resume_from_checkpoint true`): the newest complete checkpoint in `output_dir`;
    incomplete newer ones are skipped with a warning naming them. A path: that checkpoint, which
    must be complete. The choice is logged.
    """
    if resume_from_checkpoint in (None, False, ""):
        return None
    if resume_from_checkpoint is True:
        skipped = []
        for folder in checkpoints_newest_first(Path(output_dir)):
            reason = incomplete_reason(folder, save_only_model)
            if reason is None:
                if skipped:
                    logger.warning("skipped incomplete checkpoint(s) %s (a run stopped while writing them)", "; ".join(skipped))
                logger.info("resuming from %s", folder)
                return str(folder)
            skipped.append(f"{folder.name}: {reason}")
        detail = f" (incomplete: {'; '.join(skipped)})" if skipped else ""
        raise ResumeError(f"--resume_from_checkpoint true: no complete checkpoint in {output_dir}{detail}; "
                          "start without --resume_from_checkpoint")
    folder = Path(resume_from_checkpoint)
    if not folder.is_dir():
        raise ResumeError(f"--resume_from_checkpoint {folder}: no such checkpoint folder")
    reason = incomplete_reason(folder, save_only_model)
    if reason is not None:
        raise ResumeError(f"--resume_from_checkpoint {folder}: incomplete checkpoint ({reason}); "
                          "pass --resume_from_checkpoint true for the latest complete one")
    logger.info("resuming from %s", folder)
    return str(folder)


__all__ = ["ResumeError", "checkpoints_newest_first", "incomplete_reason", "resolve_resume"]
