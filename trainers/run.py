"""Stage-1 training of a SpeechLlama model: Full-FT, importance-scaled Layer-LR or LoRA
(or `adaptor`: the adaptor alone with the LLM frozen, an alignment step run before them).

    accelerate launch [--num_processes N] trainers/run.py CONFIG.yaml [--key value …]
    python trainers/run.py CONFIG.yaml [--key value …]
    speech-llama train CONFIG.yaml [--key value …]      (the same, in the CLI's process)

CONFIG.yaml holds our keys (`trainers.arguments.ModelArguments` / `DataArguments`) and any
`TrainingArguments` field; `--key value` overrides win. Outputs in `output_dir`: checkpoints,
`layer_lr.json` (Layer-LR), `final/` (complete model folder), `adapter/` (LoRA), metrics.
Resume with `--resume_from_checkpoint output_dir/checkpoint-N` (or `true` for the latest).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):
    # Started as a script (`trainers/run.py`): make the repository root importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import transformers
from transformers import PretrainedConfig, TrainerCallback, set_seed

from modeling_speech_llama import SpeechLlamaConfig, SpeechLlamaForCausalLM
from speech_llama.build import DTYPES
from speech_llama.memory import choose_freed_memory_policy
from speech_llama.remote_code import load_processor
from trainers.arguments import DataArguments, ModelArguments, parse_args
from trainers.checkpoints import resolve_resume
from trainers.constraints import CONSTRAINED_METHODS, artifact_path, build_constraint
from alignment.ctc import TranscriptCTCCollator
from trainers.data import MixEpochCallback, build_collators, load_datasets
from trainers.export import TrainingInfo, base_licences, base_model_reference, export_full, export_lora
from trainers.layer_lr import LayerLRSpec, layer_lr_spec
from trainers.lora import apply_lora, lora_config
from trainers.trainer import SpeechLlamaTrainer

logger = logging.getLogger("trainers")

RESUME_LATEST = ("true", "True", "latest", "last")


def speech_llama_config(model_name_or_path: str) -> SpeechLlamaConfig:
    """The model's config, read before any weights so that a wrong folder fails in seconds."""
    config_dict, _ = PretrainedConfig.get_config_dict(model_name_or_path)
    if config_dict.get("model_type") != "speech_llama":
        raise ValueError(f"{model_name_or_path} is not a SpeechLlama model (model_type {config_dict.get('model_type')!r}); "
                         "build one with `speech-llama build --llm … --encoder …`")
    return SpeechLlamaConfig.from_dict(config_dict)


def layer_lr_for(model_args: ModelArguments, config: SpeechLlamaConfig, learning_rate: float) -> LayerLRSpec | None:
    """Eq. 3 coefficients for method layer_lr (checked against the model's layer count), else None."""
    if model_args.method != "layer_lr":
        return None
    return layer_lr_spec(model_args.importance, config.text_config.num_hidden_layers, model_args.layer_lr_alpha,
                         model_args.layer_lr_scheme, learning_rate)


def constraint_factory(model_args: ModelArguments):
    """For region_freeze / importance_anchor: builds the constraint on the model the optimizer sees; else None."""
    if model_args.method not in CONSTRAINED_METHODS:
        return None
    artifact_path(model_args.importance)  # a missing artifact fails now, not after the weights load

    def build(model):
        return build_constraint(model_args.method, model, model_args.importance, model_args.model_name_or_path,
                                fraction=model_args.region_fraction, selection=model_args.region_selection,
                                unit=model_args.region_unit, strength=model_args.anchor_lambda,
                                weighting=model_args.anchor_weighting)

    return build


def load_for_training(model_args: ModelArguments, processor=None):
    """(model, processor) with Stage-1 freezing: encoder frozen, adaptor + LLM trainable (method adaptor:
    the LLM frozen too); LoRA applied. The folder's own code runs only with `trust_remote_code`."""
    if processor is None:
        processor = load_processor(model_args.model_name_or_path, model_args.trust_remote_code)
    model = SpeechLlamaForCausalLM.from_pretrained(model_args.model_name_or_path, dtype=DTYPES[model_args.model_dtype])
    if not model.config.freeze_encoder:
        logger.warning("config.freeze_encoder was False; Stage 1 keeps the Whisper encoder frozen")
        model.config.freeze_encoder = True
    model.requires_grad_(True)
    model.encoder.requires_grad_(False)
    if model_args.method == "adaptor":
        model.language_model.requires_grad_(False)
    if model_args.method == "lora":
        model = apply_lora(model, lora_config(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout))
    return model, processor


def upcast_trainable(model) -> int:
    """Keep trainable weights in fp32 under bf16/fp16 autocast (master weights); returns how many were cast.

    With `model_dtype: bfloat16` the frozen parts stay in bf16 (memory), but an optimizer updating
    bf16 weights directly loses small updates; peft upcasts its LoRA weights, not the adaptor copy.
    """
    cast = 0
    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype in (torch.bfloat16, torch.float16):
            parameter.data = parameter.data.float()
            cast += 1
    return cast


def adjust_training_arguments(training_args, data_args: DataArguments) -> None:
    """Defaults that depend on our own keys (set only where the config left them open)."""
    if training_args.ddp_find_unused_parameters is None:
        # A text-only batch leaves the adaptor without gradients, and DDP must then not wait for them;
        # with speech in every row all trainable parameters are used, and the search is wasted time.
        training_args.ddp_find_unused_parameters = data_args.input == "text" or data_args.mix_text_ratio > 0
    if training_args.activation_checkpointing and not training_args.activation_checkpointing_kwargs:
        # Non-reentrant checkpointing works with frozen inputs (LoRA) and with find_unused_parameters.
        training_args.activation_checkpointing_kwargs = {"use_reentrant": False}
    if training_args.resume_from_checkpoint in RESUME_LATEST:
        training_args.resume_from_checkpoint = True


class CurrentStderrHandler(logging.StreamHandler):
    """A stream handler that writes to ``sys.stderr`` as it is at each record.

    A run started in-process (``reproduce``, tests) would otherwise keep logging into the stderr of
    the first caller after that stream has been closed (transformers propagates to the root logger
    when ``CI`` is set).
    """

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(training_args) -> None:
    """INFO on the main process (group rates, coefficients), warnings elsewhere."""
    level = logging.INFO if training_args.should_log else logging.WARNING
    handler = CurrentStderrHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler], level=level, force=True)
    logger.setLevel(level)
    transformers.utils.logging.set_verbosity(training_args.get_process_log_level())


def training_info(model_args, data_args, training_args, trainer, spec, train_loss) -> TrainingInfo:
    """The facts a model card states about this run."""
    precision = "bf16 mixed" if training_args.bf16 else "fp16 mixed" if training_args.fp16 else model_args.model_dtype
    return TrainingInfo(
        method=model_args.method,
        base_model=model_args.model_name_or_path,
        train_data=data_args.train_data,
        input=data_args.input,
        mix_text_ratio=data_args.mix_text_ratio,
        transcript_ratio=data_args.transcript_ratio,
        learning_rate=training_args.learning_rate,
        lr_scheduler=str(getattr(training_args.lr_scheduler_type, "value", training_args.lr_scheduler_type)),
        warmup=training_args.warmup_steps,
        epochs=trainer.state.epoch or 0.0,
        global_step=trainer.state.global_step,
        effective_batch_size=(training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
                              * training_args.world_size),
        precision=precision,
        final_train_loss=train_loss,
        layer_lr=spec.to_json() if spec is not None else None,
        lora={"r": model_args.lora_r, "alpha": model_args.lora_alpha, "dropout": model_args.lora_dropout}
        if model_args.method == "lora" else None,
        adaptor_lr=model_args.adaptor_lr,
        constraint=constraint_settings(model_args),
        licences=base_licences(model_args.model_name_or_path),
    )


def constraint_settings(model_args: ModelArguments) -> dict | None:
    """What the card states about region_freeze / importance_anchor."""
    if model_args.method == "region_freeze":
        return {"importance": model_args.importance, "fraction": model_args.region_fraction,
                "selection": model_args.region_selection, "unit": model_args.region_unit}
    if model_args.method == "importance_anchor":
        return {"importance": model_args.importance, "lambda": model_args.anchor_lambda,
                "weighting": model_args.anchor_weighting}
    return None


def main(argv: list[str] | None = None, callbacks: list[TrainerCallback] | None = None) -> dict:
    """Train, export and (with eval data) evaluate; returns a summary (paths, loss, steps)."""
    model_args, data_args, training_args = parse_args(argv)
    choose_freed_memory_policy()
    adjust_training_arguments(training_args, data_args)
    setup_logging(training_args)
    set_seed(training_args.seed)

    # Cheap checks first (checkpoint to resume from, config, importance summary, processor, records and every
    # clip's length), then the weights.
    resume = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir, training_args.save_only_model)
    spec = layer_lr_for(model_args, speech_llama_config(model_args.model_name_or_path), training_args.learning_rate)
    processor = load_processor(model_args.model_name_or_path, model_args.trust_remote_code)
    train_dataset, eval_dataset = load_datasets(data_args, require_targets=model_args.alignment_loss == "lm",
                                                processor=processor)
    model, processor = load_for_training(model_args, processor)
    if (training_args.bf16 or training_args.fp16) and upcast_trainable(model):
        logger.info("trainable weights upcast to fp32 (mixed precision keeps fp32 master weights)")
    train_collator, eval_collator = build_collators(processor, data_args, training_args.seed)
    if model_args.alignment_loss == "ctc":
        train_collator = eval_collator = TranscriptCTCCollator(processor, source=data_args.train_data)
    trainer = SpeechLlamaTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=train_collator,
        eval_data_collator=eval_collator,
        processing_class=processor,
        layer_lr=spec,
        adaptor_lr=model_args.adaptor_lr,
        constraint_factory=constraint_factory(model_args),
        callbacks=[MixEpochCallback(train_collator)] * (model_args.alignment_loss == "lm") + list(callbacks or []),
    )
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()

    info = training_info(model_args, data_args, training_args, trainer, spec, _last_logged_loss(trainer))
    output_dir = Path(training_args.output_dir)
    summary = {"output_dir": str(output_dir), "global_step": trainer.state.global_step,
               "train_loss": result.training_loss, "resumed_from": resume}
    if model_args.method == "lora":
        adapter, final = export_lora(
            trainer, output_dir, info,
            base_reference=base_model_reference(model_args.model_name_or_path, model_args.adapter_base_model),
            base=model_args.model_name_or_path, processor=processor, dtype=DTYPES[model_args.model_dtype],
        )
        summary["adapter"] = str(adapter)
    else:
        final = export_full(trainer, output_dir, info)
    summary["final"] = str(final)

    if eval_dataset is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        summary["eval_loss"] = metrics.get("eval_loss")
    return summary


def _last_logged_loss(trainer) -> float | None:
    """The most recent logged training loss (the card's 'final training loss')."""
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses[-1] if losses else None


def cli(argv: list[str] | None = None) -> int:
    """The script entry: bad input is one line on stderr (``trainers/run.py: error: …``), status 2."""
    from speech_llama.commands import exit_status

    return exit_status("trainers/run.py", lambda: main(argv))


if __name__ == "__main__":
    sys.exit(cli())
