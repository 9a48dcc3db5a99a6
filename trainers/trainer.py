"""`SpeechLlamaTrainer`: a `transformers.Trainer` whose optimizer carries per-layer learning rates.

The behaviour added to `Trainer` is in `create_optimizer` (named parameter groups, Layer-LR
coefficients, an optional adaptor rate, an importance constraint's hooks), the gradient edit of a
constraint before clipping, and an optional evaluation collator. Everything else — schedulers,
checkpoints, resume, DDP / FSDP through accelerate — is `Trainer`'s own.

Why per-group rates survive the schedule: `LambdaLR` (warmup, cosine, linear …) stores each group's
`initial_lr` and sets `lr = initial_lr · λ(step)` with one λ for all groups, so the ratios
c_l = lr_l / lr_base hold at every step; checkpoints store `lr` and `initial_lr` per group.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, Trainer
from transformers.trainer_optimizer import is_optimizer_factory

from speech_llama.fsdp import enable_fsdp_on_cpu

from alignment.ctc import CTC_TARGETS, ctc_alignment_loss
from .constraints import GradientConstraint, attach_to_optimizer
from .layer_lr import LayerLRSpec, build_param_groups, write_layer_lr_json

logger = logging.getLogger(__name__)


class DeepSpeedOptimizerError(ValueError):
    """A DeepSpeed config brings its own optimizer, which would silently drop our parameter groups."""


def deepspeed_optimizer_block(deepspeed: str | dict | None) -> dict | None:
    """The ``optimizer`` block of a DeepSpeed config (a path to a JSON file or a dict), else None.

    Read directly (not through the deepspeed package) so the check also runs before `TrainingArguments`
    would import deepspeed.
    """
    if not deepspeed:
        return None
    if isinstance(deepspeed, (str, Path)):
        path = Path(deepspeed)
        if not path.is_file():
            return None  # TrainingArguments reports a missing file with its own message
        config = json.loads(path.read_text())
    else:
        config = dict(deepspeed)
    return config.get("optimizer")


def refuse_deepspeed_optimizer(deepspeed: str | dict | None, reason: str) -> None:
    """Raise when ``deepspeed`` carries an optimizer block while ``reason`` needs our groups."""
    block = deepspeed_optimizer_block(deepspeed)
    if block is not None:
        raise DeepSpeedOptimizerError(
            f"the DeepSpeed config defines its own optimizer ({block.get('type', '?')}); DeepSpeed would then build "
            f"it from all parameters at one learning rate and silently drop the per-group rates that {reason} needs. "
            "Remove the 'optimizer' block from the DeepSpeed config (the Trainer then builds the optimizer from "
            "--optim and our groups, and DeepSpeed wraps it)."
        )


class SpeechLlamaTrainer(Trainer):
    """`Trainer` with named parameter groups: per decoder layer (Layer-LR), adaptor, rest.

    Args:
        layer_lr: coefficients c_l from an importance summary (`trainers.layer_lr.layer_lr_spec`);
            decoder layer l then learns at `c_l · learning_rate`. None: one rate for all layers.
        adaptor_lr: learning rate of the speech adaptor's groups (None: `learning_rate`).
        eval_data_collator: collator for evaluation (e.g. without T2T mixing); None: `data_collator`.
        constraint_factory: builds a `trainers.constraints.GradientConstraint` (region_freeze,
            importance_anchor) on the model as the optimizer sees it (sharded under FSDP2); its
            gradient edit runs before clipping, its repair after every optimizer step.
        Other arguments are `Trainer`'s.
    """

    def __init__(
        self,
        *args,
        layer_lr: LayerLRSpec | None = None,
        adaptor_lr: float | None = None,
        eval_data_collator=None,
        constraint_factory: Callable[[torch.nn.Module], GradientConstraint] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.layer_lr = layer_lr
        self.adaptor_lr = adaptor_lr
        self.eval_data_collator = eval_data_collator
        self.constraint_factory = constraint_factory
        self.constraint: GradientConstraint | None = None
        if constraint_factory is not None and self.args.fp16:
            raise ValueError("region_freeze / importance_anchor edit gradients before clipping, which fp16's loss "
                             "scaling would distort; use bf16")
        if layer_lr is not None and layer_lr.base_lr != self.args.learning_rate:
            raise ValueError(f"layer_lr.base_lr ({layer_lr.base_lr}) differs from learning_rate ({self.args.learning_rate})")
        if self.uses_group_rates:
            refuse_deepspeed_optimizer(self.args.deepspeed, self._group_rate_reason())

    def create_accelerator_and_postprocess(self) -> None:
        """`Trainer`'s accelerator; under an FSDP launch on CPU processes, switched to FSDP2.

        accelerate 1.15 ignores an FSDP config on CPU (it would wrap the model in DDP);
        `speech_llama.fsdp.enable_fsdp_on_cpu` installs the launcher's FSDP2 plugin instead, so the
        CPU recipe runs the same sharding, checkpoint and export code as GPUs do.
        """
        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator):
            self.is_fsdp_enabled = True
            if self.accelerator.state.fsdp_plugin.activation_checkpointing and self.args.activation_checkpointing:
                raise ValueError("fsdp_activation_checkpointing and activation_checkpointing are both on; keep one "
                                 "(FSDP's, in the accelerate config)")

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """`Trainer._save`; under FSDP2 the remote code saved is the model's, not FSDP's wrapper class.

        `fully_shard` swaps the model's class for a generated ``FSDP<Class>`` defined in torch; the
        remote-code copy of `save_pretrained` would then copy torch's FSDP sources into the folder and
        map `AutoModelForCausalLM` to them. The copy is skipped for the wrapper class, and the
        project's own remote-code files and auto_map are written instead.
        """
        wrapper = type(self.model)
        original = _unsharded_class(wrapper)
        if original is wrapper or not isinstance(self.model, PreTrainedModel) or original._auto_class is None:
            return super()._save(output_dir, state_dict)
        shadowed = "_auto_class" in wrapper.__dict__
        previous = wrapper.__dict__.get("_auto_class")
        wrapper._auto_class = None  # save_pretrained: no custom_object_save of the wrapper class
        try:
            super()._save(output_dir, state_dict)
        finally:
            if shadowed:
                wrapper._auto_class = previous
            else:
                del wrapper._auto_class
        if self.args.should_save:
            folder = Path(output_dir if output_dir is not None else self.args.output_dir)
            save_remote_code(original, folder)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The answer loss of the model; for CTC-alignment batches (`alignment.ctc`) their CTC loss."""
        if CTC_TARGETS not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.args.world_size > 1:
            raise ValueError("CTC alignment runs the adaptor outside the model's forward, which DDP cannot sync; "
                             "run it in one process")
        loss = ctc_alignment_loss(self.accelerator.unwrap_model(model), **inputs)
        return (loss, None) if return_outputs else loss

    @property
    def uses_group_rates(self) -> bool:
        """True when some groups do not run at `learning_rate` (Layer-LR or a separate adaptor rate)."""
        return self.layer_lr is not None or self.adaptor_lr is not None

    def _group_rate_reason(self) -> str:
        return "Layer-LR" if self.layer_lr is not None else "adaptor_lr"

    def parameter_groups(self, model: torch.nn.Module | None = None) -> list[dict]:
        """The named groups `create_optimizer` builds (see `trainers.layer_lr.build_param_groups`)."""
        model = self.model if model is None else model
        return build_param_groups(
            model.named_parameters(),
            self.get_decay_parameter_names(model),
            base_lr=self.args.learning_rate,
            weight_decay=self.args.weight_decay,
            coefficients=self.layer_lr.coefficients if self.layer_lr is not None else None,
            adaptor_lr=self.adaptor_lr,
        )

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Build `--optim` over our named groups; write and log `layer_lr.json` for Layer-LR."""
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        groups = self.parameter_groups(opt_model)
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        replaced = {"params", "model", "optimizer_dict"} & set(optimizer_kwargs)
        if replaced or is_optimizer_factory(optimizer_cls):
            # GaLore, LOMO, layer-wise and factory optimizers build their own groups.
            if self.uses_group_rates:
                raise ValueError(f"--optim {self.args.optim} builds its own parameter groups, which would drop the "
                                 f"per-group rates {self._group_rate_reason()} needs; use an AdamW variant")
            super().create_optimizer(model)
        else:
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
            self._report_groups(groups)
        if self.constraint_factory is not None:
            attach_to_optimizer(self.optimizer, self.active_constraint)
        return self.optimizer

    def active_constraint(self) -> GradientConstraint | None:
        """The constraint, built on first use from the model as it is then.

        Not at optimizer creation: under FSDP2 accelerate may create the optimizer before sharding and
        then swap its parameters for the sharded ones, and the constraint must hold those.
        """
        if self.constraint is None and self.constraint_factory is not None:
            self.constraint = self.constraint_factory(self.model)
        return self.constraint

    def _clip_grad_norm(self, model):
        """The constraint's gradient edit first, so clipping measures the gradient that will be applied."""
        if self.active_constraint() is not None:
            self.constraint.prepare_gradients()
        return super()._clip_grad_norm(model)

    def _report_groups(self, groups: list[dict]) -> None:
        """Log the group rates; for Layer-LR write `output_dir/layer_lr.json` (main process)."""
        summary = ", ".join(f"{g['name']}={g['lr']:.3g}({len(g['params'])})" for g in groups)
        logger.info("optimizer groups (lr, #tensors): %s", summary)
        if self.layer_lr is None:
            return
        coefficients = ", ".join(f"{c:.4f}" for c in self.layer_lr.coefficients)
        logger.info("Layer-LR %s α=%s base_lr=%s coefficients: [%s]", self.layer_lr.scheme, self.layer_lr.alpha,
                    self.layer_lr.base_lr, coefficients)
        if self.args.should_save:
            write_layer_lr_json(self.layer_lr, self.args.output_dir)

    def get_eval_dataloader(self, eval_dataset=None):
        """Evaluation batches through `eval_data_collator` when one is set."""
        if self.eval_data_collator is None:
            return super().get_eval_dataloader(eval_dataset)
        train_collator, self.data_collator = self.data_collator, self.eval_data_collator
        try:
            return super().get_eval_dataloader(eval_dataset)
        finally:
            self.data_collator = train_collator

    def _get_learning_rate(self) -> float:
        """The scheduled base rate (`learning_rate · λ(step)`), not group 0's (which may be c_0 · base)."""
        for group in getattr(self.optimizer, "param_groups", []):
            if group.get("initial_lr"):
                return self.args.learning_rate * group["lr"] / group["initial_lr"]
        return super()._get_learning_rate()

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Also log the adaptor's current rate when it differs from the base rate."""
        if self.adaptor_lr is not None and self.optimizer is not None and "learning_rate" in logs:
            for group in self.optimizer.param_groups:
                if group.get("name", "").startswith("adaptor"):
                    logs["adaptor_learning_rate"] = group["lr"]
                    break
        super().log(logs, *args, **kwargs)


def _unsharded_class(cls: type) -> type:
    """The model's own class behind FSDP2's generated ``FSDP<Class>`` (``cls`` itself when not sharded)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return cls
    return next((base for base in cls.__mro__ if not issubclass(base, FSDPModule)), cls)


def save_remote_code(model_class: type, folder: Path) -> None:
    """Copy the file defining ``model_class`` (and its relative imports) into ``folder`` and map every
    auto class of its config.json to the project's classes."""
    import shutil
    import sys

    from transformers.dynamic_module_utils import get_relative_import_files

    from speech_llama.build import ensure_auto_map

    source = sys.modules[model_class.__module__].__file__
    for file in (source, *get_relative_import_files(source)):
        shutil.copyfile(file, folder / Path(file).name)
    if (folder / "config.json").is_file():
        ensure_auto_map(folder)


__all__ = ["DeepSpeedOptimizerError", "SpeechLlamaTrainer", "deepspeed_optimizer_block", "refuse_deepspeed_optimizer"]
