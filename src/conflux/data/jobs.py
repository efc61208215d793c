"""From a dataset entry of the config to canonical files: dispatch to the loader or generator for its kind.

This is the one place that knows every dataset kind; rule scripts call :func:`load_pairs_job` and
:func:`load_persona_job`, which compute everything first and write last, so bad input leaves no output.
"""

from __future__ import annotations

import logging
from pathlib import Path

from conflux.atomic import write_json
from conflux.data.loaders import (
    LoadResult,
    PersonaData,
    load_canonical,
    load_helpsteer2,
    load_persona,
    load_pku_saferlhf,
)
from conflux.data.pairs import write_pairs, write_sft
from conflux.data.persona_split import split_persona
from conflux.data.persona_text import bundled_persona_path
from conflux.data.sources import BUNDLED_PREFIX, resolve_path, source_fingerprint
from conflux.data.specs import DatasetSpec, PersonaSplitConfig
from conflux.data.synthetic import corpus_texts, synthetic_helpsteer, synthetic_pku

log = logging.getLogger(__name__)
__all__ = ["BUNDLED_PREFIX", "resolve_path", "source_fingerprint"]  # re-exported: callers know them here


def load_pair_dataset(spec: DatasetSpec, *, offline: bool) -> LoadResult:
    """Load or generate the canonical pairs of a multi-dimensional preference dataset."""
    if spec.kind == "synthetic_pku":
        pairs = synthetic_pku(spec.n_pairs, conflict_rate=spec.conflict_rate, seed=spec.seed, name=spec.name)
        return LoadResult(pairs=pairs, drops={}, rows_read=len(pairs))
    if spec.kind == "synthetic_helpsteer":
        pairs = synthetic_helpsteer(
            spec.n_prompts, conflict_rate=spec.conflict_rate, seed=spec.seed, name=spec.name
        )
        return LoadResult(pairs=pairs, drops={}, rows_read=len(pairs))
    source = resolve_path(spec.path)
    # how the loaders read the source: the split, revision and configuration apply to a hub id
    hub = {"split": spec.hub_split, "offline": offline, "name": spec.name, "revision": spec.revision,
           "config": spec.hub_config}  # fmt: skip
    if spec.kind == "pku_saferlhf":
        return load_pku_saferlhf(source, **hub)
    if spec.kind == "helpsteer2":
        return load_helpsteer2(source, dims=spec.dims, **hub)
    if spec.kind == "canonical":
        return load_canonical(source, dims=spec.dims, offline=offline, name=spec.name)
    raise ValueError(f"dataset '{spec.name}': kind '{spec.kind}' is not a pair dataset")


def load_pairs_job(spec: DatasetSpec, pairs_out: str | Path, stats_out: str | Path, *, offline: bool) -> None:
    """Load a pair dataset and write its canonical Parquet file and its load statistics."""
    result = load_pair_dataset(spec, offline=offline)
    for reason, count in result.drops.items():
        log.warning("%s: dropped %d rows (%s)", spec.name, count, reason)
    write_pairs(pairs_out, result.pairs)
    write_json(
        stats_out,
        {
            "dataset": spec.name,
            "kind": spec.kind,
            "source": spec.path or "generated",
            "dims": list(result.pairs.dims),
            "rows_read": result.rows_read,
            "pairs": len(result.pairs),
            "dropped": result.drops,
        },
    )
    log.info("%s: %d pairs over dims %s", spec.name, len(result.pairs), list(result.pairs.dims))


def load_persona_dataset(spec: DatasetSpec, *, offline: bool) -> PersonaData:
    return load_persona(
        resolve_path(spec.path),
        resolve_path(spec.general),
        persona=spec.persona,
        offline=offline,
        name=spec.name,
    )


def load_persona_job(
    spec: DatasetSpec,
    cfg: PersonaSplitConfig,
    outputs: dict[str, str | Path],
    stats_out: str | Path,
    *,
    offline: bool,
) -> None:
    """Load a persona dataset, hold out prompts, and write SFT rows and DPO pairs for training and evaluation.

    ``outputs`` maps ``sft_train, sft_eval, pairs_train, pairs_eval`` to paths.
    """
    data = load_persona_dataset(spec, offline=offline)
    parts, stats = split_persona(data, cfg)
    for name in ("sft_train", "sft_eval"):
        write_sft(outputs[name], parts[name])
    for name in ("pairs_train", "pairs_eval"):
        write_pairs(outputs[name], parts[name])
    write_json(stats_out, {"dataset": spec.name, "persona": spec.persona, **stats})


def bundled_corpus(seed: int = 0) -> list[str]:
    """Text the tiny model's tokenizer is trained on: the bundled persona sets and synthetic samples."""
    texts = list(corpus_texts(seed=seed))
    for name in ("general", "ojousama", "student"):
        texts.extend(text for pair in _dialogue(name) for text in pair)
    return texts


def _dialogue(name: str) -> list[tuple[str, str]]:
    from conflux.data.loaders import read_dialogue

    return read_dialogue(str(bundled_persona_path(name)), offline=True)
