"""The shipped aligned adaptor (alignment/release.py): written, verified and assembled into a model folder."""

from __future__ import annotations

import json

import pytest
import torch
from release_checks import assert_reads_held_out_speech

from alignment import release
from alignment.preset import ALIGNED_ADAPTOR, ALIGNED_NAME
from modeling_speech_llama import SpeechLlamaForCausalLM
from speech_llama import presets
from speech_llama.generate import load_model
from speech_llama.prompts import qa_inputs
from speech_llama.release_files import sha256_of

SUMMARY = {"recipe": {"base_preset": "offline-mini", "speech_instruction": "", "alignment": {"steps": 7, "batch_size": 4}},
           "corpus": {"train": {"clips": 10, "hours": 0.01}}, "dev_ctc_wer": 0.5, "heldout_ctc_wer": 0.6}


@pytest.fixture()
def aligned_tiny(tiny_model_dir, tmp_path):
    """A tiny model with the aligned adaptor type and a seeded, non-trivial adaptor, saved as a folder."""
    from speech_llama.build import BuildInfo, save_model_folder
    from speech_llama.remote_code import load_processor

    torch.manual_seed(0)
    model = SpeechLlamaForCausalLM.from_pretrained(tiny_model_dir, **ALIGNED_ADAPTOR).eval()
    with torch.no_grad():
        for parameter in model.adaptor.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    folder = save_model_folder(model, load_processor(tiny_model_dir), tmp_path / "aligned", BuildInfo("tiny", "tiny"))
    return folder


def test_release_round_trip_gives_the_adaptor_in_bf16_and_a_manifest(aligned_tiny, tiny_model_dir, tmp_path, monkeypatch):
    out = release.write_release(aligned_tiny, SUMMARY, tmp_path / "release", figures={"held-out S2T": "0.5"})
    manifest = json.loads((out / release.MANIFEST_FILE).read_text())
    assert manifest["name"] == ALIGNED_NAME and manifest["dtype"] == "bfloat16" and manifest["summary"] == SUMMARY
    assert manifest["files"][release.ADAPTOR_FILE]["sha256"] == sha256_of(out / release.ADAPTOR_FILE)
    assert manifest["code_version"] != "" and manifest["figures"] == {"held-out S2T": "0.5"}
    trained, _ = load_model(aligned_tiny)
    assert manifest["parameters"] == sum(p.numel() for p in trained.adaptor.parameters())

    state, _ = release.read_release(out)
    for name, tensor in trained.adaptor.state_dict().items():
        assert torch.equal(state[name], tensor.to(torch.bfloat16).float()), name

    monkeypatch.setattr(presets, "offline_mini_dir", lambda preset="offline-mini": tiny_model_dir)
    assembled = release.assemble_aligned(tmp_path / "assembled", out)
    model, processor = load_model(assembled)
    assert model.config.adaptor_type == "ctc_embedding_mixture" and processor.speech_instruction == ""
    for name, tensor in model.adaptor.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    base, _ = load_model(tiny_model_dir)
    assert all(torch.equal(model.language_model.state_dict()[k], v) for k, v in base.language_model.state_dict().items())
    card = (assembled / "README.md").read_text()
    assert "- Adaptor: trained on speech: CTC over the LLM vocabulary for 7 steps" in card
    assert "Measured: held-out S2T: 0.5" in card
    clip = torch.randn(16_000).numpy() * 0.1
    inputs = qa_inputs(processor, [None], [clip])
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


def test_a_damaged_or_foreign_release_is_refused_in_one_line(aligned_tiny, tmp_path):
    out = release.write_release(aligned_tiny, SUMMARY, tmp_path / "release")
    adaptor = out / release.ADAPTOR_FILE
    data = bytearray(adaptor.read_bytes())
    data[-1] ^= 0xFF
    adaptor.write_bytes(bytes(data))
    with pytest.raises(release.ReleaseError, match=r"adaptor.safetensors: sha256 .* does not match the manifest"):
        release.read_release(out)

    release.write_release(aligned_tiny, SUMMARY, out)
    manifest = json.loads((out / release.MANIFEST_FILE).read_text())
    (out / release.MANIFEST_FILE).write_text(json.dumps({**manifest, "name": "offline-mini-aligned-v1"}))
    with pytest.raises(release.ReleaseError, match="built with another recipe"):
        release.read_release(out)

    (out / release.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(release.ReleaseError, match="not a release manifest"):
        release.read_release(out)

    adaptor.unlink()
    assert not release.release_available(out)
    with pytest.raises(release.ReleaseError, match="adaptor.safetensors is missing"):
        release.read_release(out)


def test_a_linear_folder_has_no_aligned_adaptor_to_release(tiny_model_dir, tmp_path, monkeypatch):
    """A release of a linear folder would silently drop the blank's parameters: refused at assembly."""
    monkeypatch.setattr(presets, "offline_mini_dir", lambda preset="offline-mini": tiny_model_dir)
    out = release.write_release(tiny_model_dir, SUMMARY, tmp_path / "release")
    with pytest.raises(release.ReleaseError, match="does not fit"):
        release.assemble_aligned(tmp_path / "assembled", out)


def test_build_refuses_retrain_flags_outside_the_aligned_preset(tmp_path):
    from apps.cli import main

    assert main(["build", "--preset", "tiny-random", "--out", str(tmp_path / "x"), "--retrain"]) == 2
    assert main(["build", "--llm", "a", "--encoder", "b", "--out", str(tmp_path / "y"), "--release-out", str(tmp_path)]) == 2


@pytest.mark.real_weights
def test_the_shipped_release_assembles_and_reads_held_out_speech(tmp_path):
    """The shipped adaptor passes its checksum, assembles onto the offline weights, and transcribes clips
    of the held-out voice (questions of the held-out set) about as well as its manifest says."""
    state, manifest = release.read_release()
    assert manifest["files"][release.ADAPTOR_FILE]["bytes"] < 30e6 and manifest["summary"]["heldout_ctc_wer"] < 0.5
    folder = release.assemble_aligned(tmp_path / "aligned")
    model, processor = load_model(folder)
    assert all(torch.equal(model.adaptor.state_dict()[name], tensor) for name, tensor in state.items())
    assert_reads_held_out_speech(model, processor, manifest)
