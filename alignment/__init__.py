"""The alignment stage: from text to a speech adaptor the frozen LLM can read.

`texts` (sentences and questions the base LLM writes, word lists) → `clips` (spoken by many offline
voices, perturbed, with cached frozen-encoder states) → `corpus` (train / dev / held-out splits,
resumable) → `ctc` + `training` (CTC alignment of the adaptor over the LLM vocabulary) →
`distillation` (optional, from the LLM reading the transcript) → `preset` (the offline-mini-aligned
model folder). The TTS engines live in `speech_llama.tts`; `speech-llama corpus` is `apps.corpus`.
"""
