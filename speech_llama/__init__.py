"""The speech-llama library: records, audio, file io, model builds and presets, offline weights,
TTS, prompts and generation, batching, collation, perplexity, the eval runner and command dispatch
(see the README, "Project layout"). It imports only `modeling_speech_llama` and `evaluate_metrics`.
"""
