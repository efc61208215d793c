"""The config's dataset entries as typed specs: what a dataset is, known without reading its files.

Built by :func:`conflux.config.parse_config` from the validated ``datasets:`` and ``persona_split:`` sections;
the loaders and generators (:mod:`conflux.data.jobs`) dispatch on ``kind``.
"""

from __future__ import annotations

from dataclasses import dataclass

# The persona study's kinds: a persona set (persona replies preferred over general ones) and a general set
# (its own replies preferred over the base model's greedy ones, SPIN's pairing: Chen et al., 2024).
PERSONA_KINDS = ("persona", "general")
GENERATE = "generate"  # general: generate
GENERAL_PERSONA = "general"  # the persona column of a general set's rows; it has no marker lexicon


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
        has none), and always for the general set (its rejected replies are the base model's own)."""
        return self.is_persona and self.general in (None, GENERATE)

    @property
    def is_persona(self) -> bool:
        """A dataset of the persona study (a persona set or the general set)."""
        return self.kind in PERSONA_KINDS

    @property
    def persona_name(self) -> str:
        """The persona of the rows: the configured one, or ``general`` for the general set."""
        return GENERAL_PERSONA if self.kind == "general" else str(self.persona)

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
