"""CTC alignment of the speech adaptor to the LLM's own token embeddings (method `adaptor`, loss `ctc`).

A fresh adaptor learns words slowly through the LLM's answer loss (docs/paper-in-miniature.md:
on this CPU, hundreds of steps leave it carrying topic, not words). Here each adaptor frame x_t (d_llm) is scored against
every row E_v of the LLM's input-embedding matrix by cosine similarity, logits_t,v = s · cos(x_t, E_v)
(`SpeechAdaptor.token_logits`, s = 30), and a CTC loss asks the frame sequence to spell the spoken
question's tokens, with the `<speech>` placeholder as the CTC blank. A second term, mean((‖x_t‖ / r − 1)²) with r the mean
embedding norm, keeps the frames at the scale the LLM reads (without it they grow ~9x to sharpen
the softmax). The LLM is not run at all (the embedding matrix is frozen), so a step costs the
Whisper encoder plus the adaptor: ~30x cheaper than an answer-loss step. Frames then point along
the embeddings of the words spoken.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from modeling_speech_llama.modeling_speech_llama import speech_token_count
from speech_llama.audio import read_audio
from speech_llama.collate import record_location

CTC_TARGETS = "ctc_targets"
CTC_TARGET_LENGTHS = "ctc_target_lengths"


@dataclass
class TranscriptCTCCollator:
    """Records → `input_features` (B, n_mels, T_mel), `input_features_mask` (B, T_mel), and the question's
    token ids `ctc_targets` (B, S) (padded with 0) with `ctc_target_lengths` (B,)."""

    processor: Any
    source: str = "records"

    def __call__(self, records: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        clips = []
        for record in records:
            where = record_location(self.source, record)
            if record.get("audio") is None:
                raise ValueError(f"{where}, column 'audio': CTC alignment needs audio for every record")
            clips.append(read_audio(record["audio"], where=f"{where}, column 'audio'"))
        features = self.processor.extract_speech_features(clips, where=self.source)
        token_ids = self.processor.tokenizer([r["question"] for r in records], add_special_tokens=False)["input_ids"]
        lengths = torch.tensor([len(ids) for ids in token_ids])
        targets = torch.zeros(len(records), int(lengths.max()), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            targets[row, : len(ids)] = torch.tensor(ids)
        return {
            "input_features": torch.as_tensor(np.asarray(features["input_features"])),
            "input_features_mask": torch.as_tensor(np.asarray(features["input_features_mask"])),
            CTC_TARGETS: targets,
            CTC_TARGET_LENGTHS: lengths,
        }


def ctc_alignment_loss(model, input_features: torch.Tensor, input_features_mask: torch.Tensor,
                       ctc_targets: torch.Tensor, ctc_target_lengths: torch.Tensor) -> torch.Tensor:
    """CTC loss of the adaptor frames against the question tokens, from audio features.

    Args:
        model: a `SpeechLlamaForCausalLM` (not DDP-wrapped).
        input_features: (B, n_mels, T_mel); input_features_mask: (B, T_mel).
        ctc_targets: (B, S) token ids; ctc_target_lengths: (B,).
    """
    with torch.no_grad():
        encoder_states = model.encoder(input_features, input_features_mask)
    frame_counts = [speech_token_count(int(n), model.config.adaptor_downsample) for n in input_features_mask.sum(-1)]
    return ctc_loss_from_states(model, encoder_states, frame_counts, ctc_targets, ctc_target_lengths)


def ctc_loss_from_states(model, encoder_states: torch.Tensor, frame_counts: list[int], ctc_targets: torch.Tensor,
                         ctc_target_lengths: torch.Tensor) -> torch.Tensor:
    """CTC of the adaptor's vocabulary head (blank = `<speech>`) on (B, T_enc, d_enc) encoder states.

    `frame_counts[i]` adaptor frames of clip i are real (N_i = ⌊T_enc_i / k⌋). With
    `adaptor_type="linear"` a second term, mean((‖x_t‖ / r − 1)²) with r the mean embedding norm,
    keeps the frames the LLM reads at the scale of its embeddings (without it they grow ~9x to sharpen
    the softmax); the embedding mixture is on that scale by construction. Clips with fewer frames
    than a CTC path needs contribute zero (`zero_infinity`).
    """
    adaptor = model.adaptor
    embeddings = model.get_input_embeddings().weight.detach()  # (V, d_llm)
    projected = adaptor.project(encoder_states)  # (B, T, d_llm)
    log_probs = adaptor.token_logits(projected, embeddings).log_softmax(-1)  # (B, T, V) fp32
    ctc = F.ctc_loss(log_probs.transpose(0, 1), ctc_targets, torch.tensor(frame_counts), ctc_target_lengths,
                     blank=model.config.speech_token_id, zero_infinity=True)
    if model.config.adaptor_type != "linear":
        return ctc
    real = torch.arange(projected.shape[1])[None, :] < torch.tensor(frame_counts)[:, None]
    embedding_norm = embeddings.float().norm(dim=-1).mean()
    scale = ((projected.float()[real].norm(dim=-1) / embedding_norm - 1) ** 2).mean()
    return ctc + scale


def greedy_ctc_tokens(log_probs: torch.Tensor, frame_count: int, blank: int) -> list[int]:
    """Best-path CTC decoding of one clip's (T, V) scores: argmax, merge repeats, drop blanks."""
    best = log_probs[:frame_count].argmax(-1).tolist()
    return [token for index, token in enumerate(best) if token != blank and (index == 0 or token != best[index - 1])]
