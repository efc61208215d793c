"""The policy at preference weight w: π(y; w) = base + Δ_shared + Σ_i w_i Δ_i.

One PEFT model holds every LoRA adapter (`shared`, `dim0..dim{k-1}`) on the same base weights, so the policy
at any w is a single forward pass, not k models. DPO-Soup is the same object without `shared`: by linearity of
LoRA, scaling adapter i's output by w_i is exactly interpolating the merged weights ΔW_i = (α/r)·B_i·A_i.

How w enters the forward (PEFT 0.21): every ``LoraLayer`` computes
``h0 + Σ_active lora_B(lora_A(x)) · scaling[name]`` where ``scaling[name] = α/r`` initially (AdaLoRA's
``SVDLinear``, a ``LoraLayer`` too, computes ``h0 + Σ Q(Λ ⊙ P x) · scaling[name] / ranknum`` with
``scaling[name] = α``). ``at(w)`` activates the adapters with a nonzero weight (``LoraModel.set_adapter``)
and sets ``scaling[name] = w_i`` × the scaling PEFT gave it, which is exact for both; an adapter with
w_i = 0 is simply not active, so w = 0 gives exactly the base (+ shared) output and costs no compute (its
parameters then get no gradient).

Pitfall handled here: PEFT ties activation to trainability — ``set_adapter``, ``disable_adapter`` and
``enable_adapter_layers`` all reset ``requires_grad`` — so the trainable set is kept in ``PreferencePolicy``
and re-applied after every switch (see :meth:`PreferencePolicy.train_only`).

Pitfall left to the caller: with gradient checkpointing the forward is recomputed during ``backward``; run
``backward`` inside the same ``at(w)`` block (one backward per w), or the recomputation sees other scalings.

A trained method is one such policy (:func:`load_method_policy`): a curriculum stage or Panacea is one
training output with every adapter; DPO-Soup is k outputs (``dpo_soup/dim<i>``) each holding only its own
``dim<i>``, which together make one policy without `shared`, interpolated at w like any other.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftModel, PeftType, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from transformers import PreTrainedModel

from conflux.atomic import atomic_path
from conflux.errors import ConfluxError
from conflux.modeling.adapter_files import check_adapter_dir
from conflux.modeling.lora import LoraSpec

SHARED = "shared"
_ADAPTER_NAME = re.compile(rf"^({SHARED}|dim\d+)$")


def dim_name(i: int) -> str:
    """Adapter name of preference dimension ``i``."""
    return f"dim{i}"


class PreferencePolicy:
    """A PEFT model with adapters `shared` (optional) and `dim0..dim{k-1}`, evaluated at a weight vector w.

    Outside :meth:`at` the model is in PEFT's default state (every adapter active at scale α/r); always use
    ``with policy.at(w):`` for a forward pass that means something.
    """

    def __init__(self, model: PeftModel) -> None:
        names = list(model.peft_config)
        dims = sorted((n for n in names if n != SHARED), key=lambda n: int(n.removeprefix("dim")))
        if any(not n.startswith("dim") or not n[3:].isdigit() for n in dims):
            raise ConfluxError(f"adapters must be named '{SHARED}' or dim<i>, got {names}")
        if dims != [dim_name(i) for i in range(len(dims))] or not dims:
            raise ConfluxError(f"dimension adapters must be dim0..dim{{k-1}} with k >= 1, got {dims}")
        self.model = model
        self.k = len(dims)
        self.has_shared = SHARED in names
        self.adapter_names: list[str] = ([SHARED] if self.has_shared else []) + dims
        self._layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
        # The scaling PEFT set for w_i = 1 (α/r for LoRA, α for AdaLoRA, whose forward divides by its rank).
        self._unit_scaling = [dict(layer.scaling) for layer in self._layers]
        self._trainable: frozenset[str] = frozenset()
        self._activate(self.adapter_names)
        self.train_only(self.adapter_names)

    # construction -------------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, base_model: PreTrainedModel, k: int, lora: LoraSpec, *, shared: bool = True, seed: int
    ) -> PreferencePolicy:
        """Add fresh adapters to ``base_model`` (modified in place, as PEFT does).

        LoRA's B starts at zero, so the new policy equals the base at every w; A is drawn from the global
        torch RNG, which is forked and seeded here so the init depends on ``seed`` alone and the caller's RNG
        stream is left untouched.
        """
        if k < 1:
            raise ConfluxError(f"a preference policy needs k >= 1 dimensions, got k={k}")
        names = ([SHARED] if shared else []) + [dim_name(i) for i in range(k)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_peft_model(base_model, lora.to_peft(), adapter_name=names[0])
            for name in names[1:]:
                # PEFT's AdaLoraModel accepts one trainable adapter; train_only sets requires_grad instead.
                model.add_adapter(name, lora.to_peft(trainable=lora.adapter != "adalora"))
        return cls(model)

    @classmethod
    def load(cls, base_model: PreTrainedModel, adapter_dirs: Mapping[str, str | Path]) -> PreferencePolicy:
        """Load adapters saved by :meth:`save` (or any PEFT LoRA adapter directory) onto ``base_model``."""
        if not adapter_dirs:
            raise ConfluxError("no adapter directories given")
        items = list(adapter_dirs.items())
        configs = [check_adapter_dir(path) for _, path in items]
        first, first_dir = items[0]
        # PEFT's trainable flag only where PEFT allows several (AdaLoRA allows one); train_only decides.
        trainable = configs[0].get("peft_type") != PeftType.ADALORA.value
        with warnings.catch_warnings():
            # AdaLoRA's rank_pattern (triplets kept per matrix) is read by LoRA's code as per-module ranks
            # too, which warns that its keys match no module: true and harmless (PEFT 0.21).
            warnings.filterwarnings("ignore", "The following rank_pattern keys did not match")
            model = PeftModel.from_pretrained(
                base_model, str(first_dir), adapter_name=first, is_trainable=trainable
            )
            for name, path in items[1:]:
                model.load_adapter(str(path), adapter_name=name, is_trainable=trainable)
        return cls(model)

    def save(self, out_dir: str | Path) -> None:
        """Write each adapter in plain PEFT format to ``out_dir/<name>/`` (config + safetensors), atomically.

        Each directory loads with ``PeftModel.from_pretrained(base, out_dir/name)`` without conflux.
        """
        with atomic_path(out_dir, directory=True) as tmp:
            # PEFT puts a non-"default" adapter into a sub-folder named after it, which is the layout we want.
            self.model.save_pretrained(str(tmp), selected_adapters=self.adapter_names)

    # evaluation at w ---------------------------------------------------------------------------------------

    def weights(self, w: Sequence[float] | torch.Tensor) -> dict[str, float]:
        """Scale factor per adapter at preference weight ``w`` (shared always 1)."""
        values = [float(x) for x in (w.tolist() if isinstance(w, torch.Tensor) else w)]
        if len(values) != self.k:
            raise ValueError(f"w has {len(values)} entries, the policy has k={self.k} dimensions")
        scales = {dim_name(i): v for i, v in enumerate(values)}
        return {SHARED: 1.0, **scales} if self.has_shared else scales

    @contextmanager
    def at(self, w: Sequence[float] | torch.Tensor) -> Iterator[PeftModel]:
        """Make the model compute π(·; w) inside the block; restore the previous state on exit.

        The previous scalings are saved and restored (not divided back out), so nesting is exact and an inner
        ``at`` means its own w, not a product with the outer one.
        """
        scales = self.weights(w)
        saved_scaling = [dict(layer.scaling) for layer in self._layers]
        saved_active = list(self.model.base_model.active_adapters)
        try:
            self._activate([n for n, s in scales.items() if s != 0.0])
            for layer, unit in zip(self._layers, self._unit_scaling, strict=True):
                for name, s in scales.items():
                    if name in unit:  # a layer without the adapter is left alone, as PEFT's set_scale does
                        layer.scaling[name] = s * unit[name]
            yield self.model
        finally:
            for layer, scaling in zip(self._layers, saved_scaling, strict=True):
                layer.scaling.update(scaling)
            self._activate(saved_active)

    @contextmanager
    def reference(self) -> Iterator[PeftModel]:
        """The reference model π_ref: the base with every adapter bypassed (use under ``torch.no_grad``)."""
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            self._apply_trainable()  # disable/enable_adapter_layers reset requires_grad

    # trainability ------------------------------------------------------------------------------------------

    def train_only(self, names: Sequence[str]) -> None:
        """Make exactly these adapters' LoRA parameters trainable; every other parameter is frozen.

        Kept apart from activation because a pass at w = 1_i must still run `shared` while only dim_i learns.
        """
        unknown = set(names) - set(self.adapter_names)
        if unknown:
            raise ConfluxError(f"unknown adapters {sorted(unknown)}; the policy has {self.adapter_names}")
        self._trainable = frozenset(names)
        self._apply_trainable()

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters an optimizer should see (those of the adapters passed to :meth:`train_only`)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def _apply_trainable(self) -> None:
        self.model.set_requires_grad(self.adapter_names, requires_grad=False)
        if self._trainable:
            self.model.set_requires_grad(sorted(self._trainable), requires_grad=True)

    def _activate(self, names: list[str]) -> None:
        # set_adapter marks the activated adapters trainable and the others frozen; undo that right away.
        self.model.base_model.set_adapter(names)
        self._apply_trainable()

    @torch.no_grad()
    def lora_factors(self, w: Sequence[float] | torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """π(·; w)'s weight update as one LoRA: per adapted module (its name in the base model), float32
        factors (A', B') with B'A' = Σ_active s_name · ΔW_name, exactly what :meth:`at` computes.

        The factors of the active adapters are concatenated along the rank, A scaled by w_i times the
        adapter's own scaling, as PEFT's ``add_weighted_adapter(combination_type="cat")`` builds them (PEFT's
        refuses AdaLoRA, whose Λ folds into A and whose scaling divides by the initial rank, and keeps the
        rows of w_i = 0).
        """
        scales = {n: s for n, s in self.weights(w).items() if s != 0.0}
        factors = {}
        modules = {id(m): name for name, m in self.model.base_model.model.named_modules()}
        for layer, unit in zip(self._layers, self._unit_scaling, strict=True):
            a_parts, b_parts = [], []
            for name, s in scales.items():
                if name not in unit:
                    continue
                a, b = layer.lora_A[name], layer.lora_B[name]
                a, b = (a.weight, b.weight) if isinstance(a, torch.nn.Module) else (a, b)
                scale = s * unit[name]
                if name in getattr(layer, "lora_E", {}):  # AdaLoRA: Q (Λ ⊙ P) · α / (ranknum + 1e-5)
                    a = a * layer.lora_E[name]
                    scale = scale / (layer.ranknum[name] + 1e-5)
                a_parts.append(a.float() * scale)
                b_parts.append(b.float())
            if a_parts:
                factors[modules[id(layer)]] = (torch.cat(a_parts, dim=0), torch.cat(b_parts, dim=1))
        return factors

    # AdaLoRA -----------------------------------------------------------------------------------------------

    @property
    def adalora(self) -> bool:
        """Whether the adapters are AdaLoRA's (SVD form with a rank budget) rather than plain LoRA."""
        return self.model.peft_config[self.adapter_names[0]].peft_type == PeftType.ADALORA

    def orthogonal_penalty(self, name: str) -> torch.Tensor | None:
        """AdaLoRA's regulariser of one adapter, weighted: ``orth_reg_weight`` × the mean over its P and Q
        matrices of ||PPᵀ − I||_F and ||QᵀQ − I||_F, as ``AdaLoraModel.forward`` adds it to the loss of its
        one trainable adapter. None for LoRA adapters. Computed in the parameters' dtype outside any autocast.
        """
        config = self.model.peft_config[name]
        if config.peft_type != PeftType.ADALORA:
            return None
        terms = []
        for layer in self._layers:
            if name in layer.lora_A:
                p, q = layer.lora_A[name], layer.lora_B[name]
                for cov in (p @ p.T, q.T @ q):
                    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
                    terms.append(torch.linalg.matrix_norm(cov - eye))
        return config.orth_reg_weight * torch.stack(terms).mean()

    # inspection --------------------------------------------------------------------------------------------

    def adapter_state(self, name: str) -> dict[str, torch.Tensor]:
        """A detached copy of one adapter's weights, keyed as in its saved safetensors file."""
        if name not in self.adapter_names:
            raise ConfluxError(f"unknown adapter '{name}'; the policy has {self.adapter_names}")
        state = get_peft_model_state_dict(self.model, adapter_name=name)
        return {key: t.detach().clone() for key, t in state.items()}


# ---- trained runs ------------------------------------------------------------------------------------------


def adapter_dirs(run_dirs: Sequence[str | Path]) -> dict[str, Path]:
    """``adapters/<name>/`` of every run directory, ordered shared, dim0, dim1, ...

    A curriculum stage or Panacea is one run with `shared` and every dim adapter; DPO-Soup is k runs with one
    dim adapter each, which together make one policy without `shared`.
    """
    found: dict[str, Path] = {}
    for run in run_dirs:
        root = Path(run) / "adapters"
        if not root.is_dir():
            raise ConfluxError(f"{run}: no adapters/ directory; is this a preference training output?")
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            if not _ADAPTER_NAME.match(sub.name):
                raise ConfluxError(f"{sub}: adapter directories are named '{SHARED}' or dim<i>")
            if sub.name in found:
                raise ConfluxError(f"adapter '{sub.name}' is in both {found[sub.name]} and {sub}")
            check_adapter_dir(sub)
            found[sub.name] = sub
    if not found:
        raise ConfluxError(f"no adapters in {[str(r) for r in run_dirs]}")
    dims = sorted((n for n in found if n != SHARED), key=lambda n: int(n[3:]))
    return {name: found[name] for name in ([SHARED] if SHARED in found else []) + dims}


def load_method_policy(base_model: torch.nn.Module, run_dirs: Sequence[str | Path]) -> PreferencePolicy:
    """The trained policy π(·; w) of a method: its runs' adapters on ``base_model`` (modified in place)."""
    return PreferencePolicy.load(base_model, adapter_dirs(run_dirs))
