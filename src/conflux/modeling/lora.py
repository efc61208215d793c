"""Adapter settings as PEFT sees them, kept free of torch: the workflow resolves them while it plans."""

from __future__ import annotations

from dataclasses import dataclass

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTERS = ("lora", "adalora")


@dataclass(frozen=True)
class LoraSpec:
    """One adapter's hyper-parameters (the paper's r=8, α=16 on all projections by default).

    ``adapter: adalora`` is PEFT's AdaLoRA (SVD form P Λ Q with a rank budget, as Panacea's paper runs it):
    ``r`` is then the *final* average rank of the budget (AdaLoRA's ``target_r``) and every module starts at
    ``init_r`` = 1.5 r (12 for r = 8, PEFT's and the AdaLoRA paper's default ratio); its scaling is α over
    that initial rank. ``orth_reg_weight`` weighs AdaLoRA's orthogonal regulariser ||PPᵀ−I|| + ||QᵀQ−I||.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    adapter: str = "lora"
    orth_reg_weight: float = 0.5

    @property
    def init_r(self) -> int:
        """The rank a module holds in training: r for LoRA, AdaLoRA's initial 1.5 r before pruning."""
        return self.r + self.r // 2 if self.adapter == "adalora" else self.r

    def to_peft(self, *, total_step: int = 1, trainable: bool = True):
        """PEFT's config. AdaLoRA's rank schedule needs the run's optimizer steps (``total_step``); PEFT
        trains one AdaLoRA adapter per model, so every adapter but the first is added with
        ``trainable=False`` and made trainable by :class:`~conflux.modeling.policy.PreferencePolicy`."""
        if self.adapter == "adalora":
            from peft import AdaLoraConfig

            return AdaLoraConfig(
                init_r=self.init_r,
                target_r=self.r,
                lora_alpha=self.alpha,
                lora_dropout=self.dropout,
                target_modules=list(self.target_modules),
                orth_reg_weight=self.orth_reg_weight,
                total_step=total_step,
                inference_mode=not trainable,
                task_type="CAUSAL_LM",
            )
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=list(self.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )
