"""The config's dataset entries as typed specs: what a dataset is, known without reading its files.

Built by :func:`conflux.config.parse_config` from the validated ``datasets:`` and ``persona_split:`` sections;
the loaders and generators (:mod:`conflux.data.jobs`) dispatch on ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass

PERSONA_KINDS = ("persona",)
GENERATE = "generate"  # general: generate


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset entry; which fields matter depends on ``kind`` (see the schema)."""

    name: str
    kind: str
    path: str | None = None
    general: str | None = None  # a general-reply file, or "generate" (None: generate)
    persona: str | None = None
    hub_split: str = "train"
    revision: str | None = None
    hub_config: str | None = None
    dims: tuple[str, ...] | None = None
    n_pairs: int | None = None
    n_prompts: int | None = None
    conflict_rate: float = 0.3
    signal: tuple[tuple[str, float], ...] = ()  # synthetic: (dimension, visible share) over the defaults
    seed: int = 0

    @property
    def generates_general(self) -> bool:
        """A persona dataset whose general (rejected) replies the base model generates: ``general: generate``,
        also the default when no general file is given (real persona data, like OjousamaTalkScriptDataset,
        has none)."""
        return self.is_persona and self.general in (None, GENERATE)

    @property
    def is_persona(self) -> bool:
        return self.kind in PERSONA_KINDS

    @property
    def k(self) -> int:
        """Number of preference dimensions, known from the config alone (the DAG needs no data on disk)."""
        if self.is_persona:
            return 1
        if self.kind in ("synthetic_pku", "pku_saferlhf"):
            return 2
        if self.dims:
            return len(self.dims)
        return 5  # synthetic_helpsteer, or helpsteer2 with all five attributes


@dataclass(frozen=True)
class PersonaSplitConfig:
    eval_fraction: float = 0.2
    seed: int = 0
