"""Two CPU processes (gloo) train through the same Trainer, as `accelerate launch` / torchrun would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_two_process_training(tiny_model_dir, fixture_data_dir, tmp_path):
    out = tmp_path / "ddp"
    script = Path(__file__).with_name("ddp_train_script.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(tiny_model_dir), str(fixture_data_dir), str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = [line for line in proc.stdout.splitlines() if line.startswith("RANK_DONE")]
    assert len(done) == 2 and all("world_size=2" in d and "steps=3" in d for d in done)
    prov = json.loads((out / "adapter" / "provenance.json").read_text())
    assert prov["world_size"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
