"""What the two release tests check alike: a shipped adaptor still transcribes the held-out voice."""

from __future__ import annotations

HELD_OUT_CLIPS = 16
# 16 clips against the manifest's 404: a margin for the smaller sample, well below an unaligned adaptor's ~1.0.
WER_MARGIN = 0.15


def assert_reads_held_out_speech(model, processor, manifest: dict) -> None:
    """CTC word error rate of the adaptor on the first held-out questions read by the held-out voice,
    within `WER_MARGIN` of the manifest's figure over all 404."""
    from alignment.corpus import held_out_records
    from alignment.encoder import FrozenSpeechEncoder
    from alignment.training import CachedClip, ctc_word_error_rate
    from speech_llama.synthesize import synthesize_texts
    from speech_llama.tts import HELD_OUT_VOICE

    questions = [record["question"] for record in held_out_records()[:HELD_OUT_CLIPS]]
    encoder = FrozenSpeechEncoder(model=model, processor=processor)
    clips = [CachedClip(encoder.states(audio, where=question), processor.tokenizer(question, add_special_tokens=False)["input_ids"],
                        question) for question, audio in zip(questions, synthesize_texts(questions, HELD_OUT_VOICE))]
    wer, transcripts = ctc_word_error_rate(model, processor.tokenizer, clips)
    assert wer <= manifest["summary"]["heldout_ctc_wer"] + WER_MARGIN, list(zip(questions, transcripts))
