"""Trainers end to end with two processes (DDP on CPU, gloo): each method, kill + resume, exports.

Three `accelerate launch` runs, shared by the tests below (module fixture):
1. `trainers/run.py` with the tiny-random Layer-LR config (the reference run: checkpoints 3 and 6);
2. a driver calling `trainers.run.main` for Full-FT (half of the records as text: mixed batches
   under DDP), LoRA, and a Layer-LR run that is hard-killed
   (`os._exit`) right after its step-3 checkpoint (one launch: imports are the slow part here);
3. `trainers/run.py … --resume_from_checkpoint …/checkpoint-3` on the killed run.

Note: in accelerate 1.15 `accelerate launch --cpu --num_processes 2` starts ONE process unless an
MPI hostfile is given; `--multi_gpu --num_processes 2` on a machine without GPUs starts two
processes on torchrun, which train on CPU with gloo (checked below through the epoch count).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import noise_clip

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `trainers` is importable from the repo root (an older editable install may not map it)
    sys.path.insert(0, str(REPO))

from test_trainers import write_records  # noqa: E402

from trainers.layer_lr import layer_coefficients  # noqa: E402

CONFIGS = REPO / "trainers" / "configs" / "tiny-random"
NUM_RECORDS, PROCESSES, BATCH, MAX_STEPS = 8, 2, 2, 6
pytestmark = pytest.mark.slow


def free_port() -> int:
    """A free TCP port: the default rendezvous port 29500 may be taken by another job on this machine."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(script: str, args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes 2 SCRIPT ARGS` (two CPU processes here)."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(PROCESSES),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()), script, *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if "Error" in line or "rank" in line][:40]
        raise AssertionError(f"launch failed ({result.returncode}):\n" + "\n".join(errors) + "\n" + result.stderr[-4000:])
    return result


DRIVER = """
import os, sys
import torch
from transformers import TrainerCallback
from trainers.run import main

class HardKillAfterCheckpoint(TrainerCallback):
    # os._exit: no cleanup and no export, as if the job had been killed once the checkpoint was on
    # disk. The barrier waits for rank 0, which writes trainer_state.json after the other ranks are done.
    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= 3:
            torch.distributed.barrier()
            os._exit(17)

common, out = sys.argv[1:-1], sys.argv[-1]
main([{full!r}, *common, "--output_dir", out + "/full", "--mix_text_ratio", "0.5"])  # T2T and S2T rows mixed
main([{lora!r}, *common, "--output_dir", out + "/lora"])
main([{layer_lr!r}, *common, "--output_dir", out + "/killed"], callbacks=[HardKillAfterCheckpoint()])
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """Output folders of the three launches: reference, full, lora, killed (+ resumed)."""
    root = tmp_path_factory.mktemp("trainer-runs")
    data = write_records(root / "data", count=NUM_RECORDS)
    common = ["--model_name_or_path", str(tiny_model_dir), "--train_data", str(data), "--max_steps", str(MAX_STEPS),
              "--per_device_train_batch_size", str(BATCH)]
    launch(str(REPO / "trainers" / "run.py"),
           [str(CONFIGS / "layer_lr.yaml"), *common, "--output_dir", str(root / "reference")], cwd=REPO)
    driver = root / "driver.py"
    driver.write_text(textwrap.dedent(DRIVER.format(full=str(CONFIGS / "full.yaml"), lora=str(CONFIGS / "lora.yaml"),
                                                    layer_lr=str(CONFIGS / "layer_lr.yaml"))))
    killed = launch(str(driver), [*common, str(root)], cwd=REPO, check=False)
    assert killed.returncode != 0, "the killed run should have ended with an error status"
    assert (root / "lora" / "final").is_dir(), killed.stderr[-6000:]
    assert (root / "killed" / "checkpoint-3").is_dir() and not (root / "killed" / "checkpoint-6").exists()
    assert not (root / "killed" / "final").exists()
    launch(str(REPO / "trainers" / "run.py"),
           [str(CONFIGS / "layer_lr.yaml"), *common, "--output_dir", str(root / "killed"),
            "--resume_from_checkpoint", str(root / "killed" / "checkpoint-3")], cwd=REPO)
    return root


def trainer_state(folder: Path) -> dict:
    return json.loads((folder / "trainer_state.json").read_text())


def losses(folder: Path) -> dict[int, float]:
    return {entry["step"]: entry["loss"] for entry in trainer_state(folder)["log_history"] if "loss" in entry}


def optimizer_groups(checkpoint: Path) -> list[dict]:
    state = torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=False)
    return [{key: group[key] for key in ("name", "lr", "initial_lr", "weight_decay")} for group in state["param_groups"]]


@pytest.mark.parametrize("method", ["full", "layer_lr", "lora"])
def test_each_method_trains_with_two_processes(runs, tiny_model_dir, method):
    from transformers import AutoModelForCausalLM

    folder = runs / {"layer_lr": "reference"}.get(method, method)
    state = trainer_state(folder)
    assert state["global_step"] == MAX_STEPS
    # Two processes × batch 2 over 8 records: 2 steps per epoch (one process would need 4).
    assert state["epoch"] == pytest.approx(MAX_STEPS * PROCESSES * BATCH / NUM_RECORDS)
    assert all(torch.isfinite(torch.tensor(loss)) for loss in losses(folder).values())
    final = AutoModelForCausalLM.from_pretrained(folder / "final", trust_remote_code=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, trust_remote_code=True)
    trained, original = final.state_dict(), base.state_dict()
    changed = {name.split(".")[0] for name in original if not torch.equal(trained[name], original[name])}
    assert changed == {"adaptor", "language_model"}  # the encoder stays frozen
    card = (folder / "final" / "README.md").read_text()
    assert f"Stage-1 trained ({method})" in card and "Whisper encoder" in card
    assert "## Licences" in card and "Apache-2.0" in card  # carried over from the base model's card
    if method == "full":
        assert "50% of the records as text" in card


def test_layer_lr_json_and_checkpoint_groups_match_eq3(runs):
    importance = json.loads((CONFIGS / "importance.json").read_text())["layers"]
    expected = layer_coefficients(importance, alpha=0.4, scheme="minmax")
    written = json.loads((runs / "reference" / "layer_lr.json").read_text())
    assert written["scheme"] == "minmax" and written["alpha"] == 0.4
    assert written["coefficients"] == pytest.approx(expected)
    base = written["base_lr"]
    groups = {g["name"]: g for g in optimizer_groups(runs / "reference" / "checkpoint-6")}
    factor = groups["other.decay"]["lr"] / groups["other.decay"]["initial_lr"]
    for layer, c in enumerate(expected):
        for kind in ("decay", "no_decay"):
            group = groups[f"layer{layer}.{kind}"]
            assert group["initial_lr"] == pytest.approx(c * base)
            assert group["lr"] == pytest.approx(c * base * factor)  # same schedule factor for every group
    assert groups["adaptor.decay"]["initial_lr"] == pytest.approx(base)
    assert "Layer-LR" in (runs / "reference" / "final" / "README.md").read_text()


def test_resume_after_kill_continues_the_same_run(runs):
    resumed, reference = runs / "killed", runs / "reference"
    assert trainer_state(resumed)["global_step"] == MAX_STEPS
    assert_same_groups(optimizer_groups(resumed / "checkpoint-6"), optimizer_groups(reference / "checkpoint-6"))
    resumed_losses, reference_losses = losses(resumed), losses(reference)
    assert sorted(resumed_losses) == list(range(1, MAX_STEPS + 1))  # steps 1-3 from the checkpoint, then 4-6
    for step in range(4, MAX_STEPS + 1):
        assert resumed_losses[step] == pytest.approx(reference_losses[step], rel=1e-4), step
    assert json.loads((resumed / "layer_lr.json").read_text()) == json.loads((reference / "layer_lr.json").read_text())
    assert (resumed / "final" / "config.json").is_file()


def assert_same_groups(left: list[dict], right: list[dict]) -> None:
    """Same group names in the same order, with the same rates and weight decay."""
    assert [g["name"] for g in left] == [g["name"] for g in right]
    for a, b in zip(left, right):
        for key in ("lr", "initial_lr", "weight_decay"):
            assert a[key] == pytest.approx(b[key]), (a["name"], key)


def test_lora_exports_load_as_stated_and_agree(runs, tiny_model_dir):
    from transformers import AutoModel, AutoModelForCausalLM, AutoProcessor

    from speech_llama.prompts import qa_prompt

    adapter_dir, final_dir = runs / "lora" / "adapter", runs / "lora" / "final"
    assert not (adapter_dir / "config.json").exists()
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    assert adapter_config["r"] == 4 and adapter_config["modules_to_save"] == ["adaptor"]
    adapted = AutoModel.from_pretrained(adapter_dir, trust_remote_code=True).eval()
    merged = AutoModelForCausalLM.from_pretrained(final_dir, trust_remote_code=True).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(adapter_dir, trust_remote_code=True)
    prompts = [qa_prompt(processor, speech=True), qa_prompt(processor, "What is the capital of Japan?")]
    inputs = processor(text=prompts, audio=[noise_clip(1.2, seed=5), None], sampling_rate=16000)
    with torch.no_grad():
        logits = {name: model(**inputs).logits for name, model in
                  (("adapted", adapted), ("merged", merged), ("base", base))}
    real = inputs["attention_mask"].bool()
    assert (logits["adapted"] - logits["merged"])[real].abs().max() <= 1e-4
    assert (logits["adapted"] - logits["base"])[real].abs().max() > 1e-2  # the adapter does something
    # The trained adaptor travels in the adapter (modules_to_save) and sits in the merged weights.
    state = adapted.state_dict()
    assert torch.equal(state["adaptor.modules_to_save.default.linear_1.weight"], merged.state_dict()["adaptor.linear_1.weight"])
    assert "r = 4" in (adapter_dir / "README.md").read_text()
