"""AdaLoRA's rank budget for several trainable adapters at once (Panacea as its paper ran it).

PEFT's ``AdaLoraModel`` trains one AdaLoRA adapter per model: it holds one ``RankAllocator`` and its
``update_and_allocate`` serves ``trainable_adapter_name`` alone. Panacea trains k+1 of them together, so this
module keeps one PEFT ``RankAllocator`` per trained adapter (PEFT's class, its sensitivity scores and cubic
budget schedule unchanged) and repeats ``AdaLoraModel.update_and_allocate``'s three phases for each — the only
hand-written part. It runs as a Trainer callback after every optimizer step and before the gradients are
zeroed, where PEFT's docs call ``update_and_allocate``; the step index is the Trainer's ``global_step`` before
its increment (0 for the first update), as in PEFT's examples.

Each adapter's rank pattern is kept here during training, not on its PEFT config: a pattern there makes every
checkpoint save shrink the tensors, and loading the checkpoint would then resize the live modules under the
optimizer. :meth:`RankSchedule.finalize` puts it on the configs for the final save, which PEFT then writes
at the pruned ranks (loading resizes them back, exactly as for an adapter trained by ``AdaLoraModel``).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft.tuners.adalora import RankAllocator
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from conflux.errors import ConfluxError
from conflux.modeling.policy import PreferencePolicy

STATE_FILE = "adalora_allocator.safetensors"  # sensitivity EMAs of every allocator, in a checkpoint
PATTERN_FILE = "adalora_rank_pattern.json"


class RankSchedule(TrainerCallback):
    """One PEFT ``RankAllocator`` per trained AdaLoRA adapter, stepped after each optimizer step."""

    def __init__(self, policy: PreferencePolicy, adapters: list[str]) -> None:
        self.policy = policy
        self.model = policy.model.base_model.model  # the transformer, as AdaLoraModel hands to its allocator
        names = [n for n, _ in self.model.named_parameters()]
        self.allocators: dict[str, RankAllocator] = {}
        for name in adapters:
            # PEFT's allocator finds an adapter's parameters by substring ("dim1" is in "dim10"): refuse a
            # model or an adapter set where that would mix two adapters' scores.
            own = {n for n in names if n.endswith(f".{name}") and ".lora_" in n}
            matched = {n for n in names if "lora_" in n and name in n}
            if own != matched:
                extra = sorted(matched - own)[:3]
                raise ConfluxError(f"AdaLoRA adapter '{name}' would also score parameters {extra}")
            self.allocators[name] = RankAllocator(self.model, policy.model.peft_config[name], name)
        self.patterns: dict[str, dict[str, list[bool]]] = {}

    def on_train_begin(self, args, state, control, **kwargs) -> None:
        for name, allocator in self.allocators.items():
            config = allocator.peft_config
            config.total_step = state.max_steps
            if config.tinit >= state.max_steps - config.tfinal:
                raise ConfluxError(
                    f"AdaLoRA adapter '{name}': {state.max_steps} optimizer steps leave no budgeting phase "
                    f"after tinit={config.tinit} and before tfinal={config.tfinal}"
                )

    def on_optimizer_step(self, args, state, control, **kwargs) -> None:
        self.step(state.global_step)

    def step(self, global_step: int) -> None:
        """``AdaLoraModel.update_and_allocate(global_step)`` for every trained adapter."""
        for name, allocator in self.allocators.items():
            config = allocator.peft_config
            end = config.total_step - config.tfinal
            if global_step < end:
                _, pattern = allocator.update_and_allocate(self.model, global_step)
                if pattern:
                    self.patterns[name] = pattern
            elif global_step == end:
                _, pattern = allocator.update_and_allocate(self.model, global_step, force_mask=True)
                self.patterns[name] = pattern
                allocator.reset_ipt()
            elif name in self.patterns:
                allocator.mask_using_rank_pattern(self.model, self.patterns[name])

    def finalize(self) -> None:
        """Put each adapter's last rank pattern on its PEFT config, so the saved adapter has pruned ranks."""
        for name, pattern in self.patterns.items():
            self.policy.model.peft_config[name].rank_pattern = pattern

    def summary(self) -> dict[str, dict[str, int]]:
        """Ranks kept per adapter by the last allocation (for summary.json): kept and initial, summed."""
        return {
            name: {
                "kept_rank": sum(sum(v) for v in p.values()),
                "initial_rank": sum(len(v) for v in p.values()),
            }
            for name, p in self.patterns.items()
        }

    # checkpoints -------------------------------------------------------------------------------------------

    def save(self, checkpoint: str | Path) -> None:
        """The allocators' EMAs and the patterns: a resumed run allocates exactly as an uninterrupted one."""
        tensors: dict[str, torch.Tensor] = {}
        for name, allocator in self.allocators.items():
            for kind in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
                for param, value in getattr(allocator, kind).items():
                    tensors[f"{name}|{kind}|{param}"] = value.detach().contiguous().cpu()
        save_file(tensors, str(Path(checkpoint) / STATE_FILE))
        (Path(checkpoint) / PATTERN_FILE).write_text(json.dumps(self.patterns), encoding="utf-8")

    def load(self, checkpoint: str | Path) -> None:
        path = Path(checkpoint) / STATE_FILE
        if not path.is_file():
            raise ConfluxError(f"checkpoint {checkpoint} has no AdaLoRA allocator state ({STATE_FILE})")
        device = next(self.model.parameters()).device
        for allocator in self.allocators.values():
            allocator.reset_ipt()
        for key, value in load_file(str(path)).items():
            name, kind, param = key.split("|", 2)
            getattr(self.allocators[name], kind)[param] = value.to(device)
        self.patterns = json.loads((Path(checkpoint) / PATTERN_FILE).read_text(encoding="utf-8"))


@contextmanager
def quiet_pruned_ranks() -> Iterator[None]:
    """Saving an adapter with a matrix pruned to rank 0 (AdaLoRA allows it) makes PEFT 0.21 warn that its
    zero-sized tensors look like unsaved FSDP shards; they are not, so that warning is dropped here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*LoRA tensor\(s\) have invalid shape")
        yield


def rank_schedule(policy: PreferencePolicy, trained: list[str]) -> RankSchedule | None:
    """The schedule of a policy's trained AdaLoRA adapters; None for LoRA."""
    return RankSchedule(policy, trained) if policy.adalora else None
