"""Stage-1 training of SpeechLlama: Full-FT, importance-scaled Layer-LR and LoRA (`trainers/run.py`).

Modules: `arguments` (YAML + CLI → dataclasses), `data` (records → batches, T2T mixing),
`layer_lr` (Eq. 3 and parameter groups), `trainer` (`SpeechLlamaTrainer`), `lora` (peft setup),
`export` (`final/`, `adapter/`, model cards), `run` (the `accelerate launch` entry point).
"""
