"""bench/gpu_check.sh on the CPU and a tiny model, so the GPU check cannot rot between GPU sessions."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_cpu_and_prints_its_json():
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu", "--tiny"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)  # stdout is the JSON and nothing else
    assert out["device"] == "cpu" and out["parameters"] > 0
    lora = out["lora_dpo"]
    assert lora["conflux_tokens_per_s"] > 0 and lora["trl_tokens_per_s"] > 0 and lora["plan_gib"] > 0
    assert lora["mfu"] is None and lora["peak_allocated_gib"] is None  # GPU figures, none on a CPU
    full = out["fsdp_full_sft"]
    assert (full["ranks"], full["distributed"], full["global_steps"]) == (2, "fsdp", 4)
    assert math.isfinite(full["train_loss"]) and full["plan_gib"] > 0
