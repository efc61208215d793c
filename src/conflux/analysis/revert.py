"""Layer and module reverts: which parts of a fine-tune carry its effect?

A *revert target* sets some parameters of a fine-tuned model back to the base's: one layer (every parameter
of ``layers.<i>``), one module type (every ``q_proj``, or every MLP ``down_proj``, ... across layers) or one
(layer, module type) cell. The sweep loads the fine-tuned model once and, for each target, copies the base's
tensors into the chosen parameters in place, evaluates with the persona metrics, and copies the fine-tuned
tensors back: a model is read once per sweep, not once per target, and no reverted copy is written (at 8B,
one per layer would be 16 GB each). :func:`conflux.analysis.merge.revert_to_base` writes such a copy when one
is wanted on disk; both choose parameters with :func:`conflux.analysis.merge.revert_selection`. What does
not depend on the target is done once per sweep too: the prompts and pairs are tokenized once, and each
parameter's ‖τ‖² is computed once, and a target's scoring starts at the first layer it changes from the
fine-tune's hidden states (:mod:`conflux.analysis.layer_prefix`); ``bench/revert.py`` times it.

The effect of a target is read off the persona margin (mean log π(y_persona|x) − log π(y_general|x) on the
held-out pairs): ``effect_removed = (m_ft − m_revert) / (m_ft − m_base)`` is the share of the fine-tune's
margin gain over the base that the revert takes away (1: this part alone carries it; 0: irrelevant; < 0 or
> 1 are possible, parts interact). Beside it: the change of margin accuracy, of general perplexity and, with
generation, of the persona style share; and the L2 norm of the task vector on the target's parameters and its
share of the whole task vector's norm, so norm and effect can be compared directly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from conflux.analysis.layer_prefix import LayerPrefix, first_layer
from conflux.analysis.merge import revert_selection
from conflux.analysis.param_names import MODULE_TYPES, parse_param_name
from conflux.analysis.tensor_io import WeightFiles
from conflux.atomic import write_json
from conflux.errors import ConfluxError
from conflux.evaluation.persona_eval import evaluate_inputs, held_out_inputs, persona_inputs, prompt_format_of
from conflux.modeling.base_model import base_model_dir, to_work_device, working_dtype
from conflux.modeling.generation import GenerationSettings
from conflux.modeling.tokenize import TokenizeSettings
from conflux.modeling.variants import load_variant
from conflux.progress import with_progress

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RevertTarget:
    """One set of parameters reverted together: a layer, a module type across layers, or one cell."""

    kind: str
    layer: int | None = None
    module: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "layer":
            return f"layer{self.layer}"
        if self.kind == "module":
            return f"module-{self.module}"
        return f"layer{self.layer}-{self.module}"

    def select(self, names: Sequence[str]) -> list[str]:
        layers = None if self.layer is None else [self.layer]
        modules = None if self.module is None else [self.module]
        return revert_selection(names, layers=layers, modules=modules)


def revert_targets(
    names: Sequence[str], *, layers: Sequence[int] | None, modules: Sequence[str] | None, cells: bool
) -> list[RevertTarget]:
    """The targets of a sweep over a checkpoint's parameter names.

    Args:
        layers: layer indices to revert one at a time; ``None`` = every layer of the model.
        modules: module types to revert one at a time (each across every layer and non-layer parameter);
            ``None`` = every type the model has, in the order of :data:`MODULE_TYPES` (``other`` excluded).
        cells: also revert each (layer, module type) pair of those layers and modules that has parameters.

    A layer or module type the model does not have is an error (a typo would otherwise be a silent gap).
    """
    present = [parse_param_name(n) for n in names]
    model_layers = sorted({layer for layer, _ in present if layer is not None})
    model_modules = {module for _, module in present}
    chosen_layers = model_layers if layers is None else list(layers)
    missing_layers = sorted(set(chosen_layers) - set(model_layers))
    if missing_layers:
        raise ConfluxError(
            f"the model has layers {model_layers[:1]}..{model_layers[-1:]}, not {missing_layers}"
        )
    if modules is None:
        modules = [m for m in MODULE_TYPES if m in model_modules and m != "other"]
    missing_modules = sorted(set(modules) - model_modules)
    if missing_modules:
        raise ConfluxError(f"the model has no {missing_modules} parameters; it has {sorted(model_modules)}")
    targets = [RevertTarget("layer", layer=i) for i in chosen_layers]
    targets += [RevertTarget("module", module=m) for m in modules]
    if cells:
        pairs = set(present)
        targets += [
            RevertTarget("cell", layer=i, module=m) for i in chosen_layers for m in modules if (i, m) in pairs
        ]
    return targets


def _squared_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Σ (a − b)² in float64."""
    return float((a.detach().double() - b.double()).square().sum())


class BaseSwap:
    """Swaps chosen parameters of a loaded model with the base's tensors and back, in place.

    Names are the checkpoint's (``model.layers.0.self_attn.q_proj.weight``), which are the model's parameter
    names for a transformers causal LM. Tied parameters (embeddings and head) share storage, so reverting
    one reverts both, as it would in a written checkpoint.
    """

    def __init__(self, model: torch.nn.Module, base: WeightFiles) -> None:
        self.params = dict(model.named_parameters(remove_duplicate=False))
        self.base = base
        unknown = [n for n in base.names if n not in self.params]
        if unknown:
            raise ConfluxError(
                f"{base.path}: {len(unknown)} base tensor(s) are not model parameters: {unknown[:3]}"
            )
        # ||θ_ft − θ_base||² per parameter: a property of the fine-tune, not of a target, so each is computed
        # once per sweep (a parameter is in a layer, a module and a cell target) and summed per target.
        self._squared: dict[str, float] = {}

    def _base(self, name: str) -> torch.Tensor:
        """The base's tensor of a parameter, on the parameter's device and in its dtype."""
        p = self.params[name]
        return self.base.get(name).to(p.device, p.dtype)

    def _squared_tau(self, name: str, base: torch.Tensor | None = None) -> float:
        """Σ (θ_ft − θ_base)² of one parameter (float64), cached; valid while the fine-tune's values are in
        place, which :meth:`reverted` restores exactly on exit."""
        if name not in self._squared:
            with torch.no_grad():
                self._squared[name] = _squared_distance(
                    self.params[name], self._base(name) if base is None else base
                )
        return self._squared[name]

    def tau_l2(self, names: Sequence[str]) -> float:
        """‖θ_ft − θ_base‖₂ over the named parameters, accumulated in float64 one tensor at a time."""
        return math.sqrt(sum(self._squared_tau(n) for n in names))

    @contextmanager
    def reverted(self, names: Sequence[str]) -> Iterator[float]:
        """Within the block the named parameters hold the base's values; yields their τ L2 norm."""
        saved: dict[str, torch.Tensor] = {}
        total = 0.0
        try:
            with torch.no_grad():
                for name in names:
                    base = self._base(name)
                    total += self._squared_tau(name, base)
                    saved[name] = self.params[name].detach().clone()
                    self.params[name].copy_(base)
            yield math.sqrt(total)
        finally:
            with torch.no_grad():
                # Last in, first out: a tied pair (embeddings and head share storage) saved the second name
                # after the first was reverted, so restoring in order would leave the base in both.
                for name, value in reversed(saved.items()):
                    self.params[name].copy_(value)


def revert_sweep_job(
    *,
    method: str,
    seed: int,
    manifest: str | Path,
    model_dir: str | Path,
    sft_eval: str | Path,
    pairs_eval: str | Path,
    out: str | Path,
    settings: TokenizeSettings,
    generation: GenerationSettings,
    layers: Sequence[int] | None,
    modules: Sequence[str] | None,
    cells: bool,
    generate: bool,
) -> dict[str, Any]:
    """Evaluate a persona variant with each revert target set back to the base; write one JSON atomically.

    The unreverted model is evaluated first (``finetuned``); a target whose task vector is exactly zero (a
    LoRA fine-tune that never touched it) reuses those metrics instead of evaluating an identical model.
    """
    persona, prompts, pairs = held_out_inputs(sft_eval, pairs_eval)
    model, tokenizer = load_variant(manifest, model_dir, dtype=working_dtype())
    model = to_work_device(model)
    base = WeightFiles(base_model_dir(manifest))
    swap = BaseSwap(model, base)
    targets = revert_targets(base.names, layers=layers, modules=modules, cells=cells)
    # Prompts and pairs are tokenized once: a target changes weights, not the texts put to the model.
    inputs = persona_inputs(tokenizer, prompts if generate else [], pairs, persona, settings, generation)

    prefix = LayerPrefix(model)

    def evaluate(scoring: AbstractContextManager) -> dict[str, Any]:
        return evaluate_inputs(model, tokenizer, inputs, generation, scoring=scoring)["metrics"]

    finetuned = evaluate(prefix.recording())  # keeps every layer's input for the targets' scoring
    total_l2 = swap.tau_l2(base.names)
    rows = []
    for target in with_progress(targets, desc=f"revert sweep of {method}", unit="target"):
        names = target.select(base.names)
        with swap.reverted(names) as l2:
            metrics = evaluate(prefix.starting_at(first_layer(names))) if l2 > 0 else finetuned
        rows.append(
            {
                **asdict(target),
                "label": target.label,
                "n_params": len(names),
                "tau_l2": l2,
                "metrics": metrics,
            }
        )
        log.info("%s: τ L2 %.4g, margin %.4g", target.label, l2, metrics["persona_margin"]["mean"])
    record = {
        "method": method,
        "seed": seed,
        "persona": persona,
        "model_dir": str(model_dir),
        "generate": generate,
        "prompt_format": prompt_format_of(manifest),
        "tau_l2_total": total_l2,
        "finetuned": finetuned,
        "targets": rows,
    }
    write_json(out, record)
    return record


# ---- the "key layers and parameters" table -----------------------------------------------------------------
