"""Persona-study metrics of one model variant (base, SFT, DPO, a merged or layer-reverted model).

Three questions, one number family each:

* **Does it speak in the persona?** Greedy generations on the held-out prompts, scored with the marker
  lexicon :data:`conflux.data.persona_text.PERSONA_MARKERS` (see :mod:`conflux.evaluation.persona_markers`):
  the share of generations with at least one marker of the persona, and the mean number of markers per
  generation. The other persona's markers are counted too, so a model that drifts into the wrong persona
  shows.
* **Does it prefer the persona?** On the held-out persona-vs-general pairs the log-prob margin
  log π(y_persona|x) − log π(y_general|x) (sums over response tokens, eos included): its mean, and the share
  of pairs where it is positive (a zero margin counts as not preferring).
* **What did it keep?** Perplexity on the held-out general responses, exp(Σ NLL / Σ tokens) over their
  response tokens given the prompt (a corpus perplexity: long responses weigh by their length).

Prompts are put to every variant in the base model's prompt format, through
:func:`conflux.modeling.tokenize.prompt_ids` as in training; the record names the format, and a table refuses
variants prompted in different ones.

Per-item values (each generation and its marker counts, each pair's log-probs and token counts) are kept in
the output so the table can bootstrap over prompts and pairs and average over seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conflux.atomic import write_json
from conflux.data.persona_text import PERSONA_MARKERS
from conflux.data.specs import GENERAL_PERSONA
from conflux.errors import ConfluxError
from conflux.evaluation.persona_data import held_out_inputs, held_out_pairs, persona_of
from conflux.evaluation.persona_markers import count_markers, style_summary
from conflux.modeling.base_model import read_manifest, to_work_device, working_dtype
from conflux.modeling.generation import GenerationSettings, encode_prompts, generate_ids
from conflux.modeling.logprobs import score_rows
from conflux.modeling.tokenize import Row, TokenizeSettings, fit_pair, pad_id_of, prompt_ids, response_ids
from conflux.modeling.variants import load_variant

log = logging.getLogger(__name__)
__all__ = ["held_out_inputs", "held_out_pairs", "persona_of"]  # re-exported: read where the metrics are made

# ---- log-probs of held-out pairs ---------------------------------------------------------------------------


def pair_rows(
    tokenizer,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    settings: TokenizeSettings,
) -> tuple[list[tuple[Row, Row]], list[bool]]:
    """Token rows of each pair, cut as :func:`conflux.modeling.tokenize.encode_pair` cuts them (both responses
    of a pair share one prompt cut, so their margin compares them under the same context), and whether each
    pair was cut."""
    rows, cut = [], []
    for prompt, a, b in zip(prompts, responses_a, responses_b, strict=True):
        pair, n_cut = fit_pair(
            prompt_ids(tokenizer, prompt),
            (response_ids(tokenizer, a), response_ids(tokenizer, b)),
            settings.max_length,
            settings.truncation,
        )
        rows.append((pair[0], pair[1]))
        cut.append(n_cut > 0)
    return rows, cut


def score_pairs(
    model, rows: Sequence[tuple[Row, Row]], cut: Sequence[bool], pad_id: int, *, batch_size: int
) -> dict[str, np.ndarray]:
    """log π(y_a|x), log π(y_b|x), their response token counts and the truncation flag, per pair."""
    model.eval()
    logp_a, logp_b = score_rows(
        model, [a for a, _ in rows], [b for _, b in rows], pad_id, batch_size=batch_size
    )
    return {
        "logp_a": logp_a,
        "logp_b": logp_b,
        "tokens_a": np.array([len(ra[1]) for ra, _ in rows]),
        "tokens_b": np.array([len(rb[1]) for _, rb in rows]),
        "truncated": np.array(cut, dtype=bool),
    }


def response_logps(
    model,
    tokenizer,
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    settings: TokenizeSettings,
    *,
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """log π(y_a|x), log π(y_b|x), their response token counts and a truncation flag, per pair."""
    rows, cut = pair_rows(tokenizer, prompts, responses_a, responses_b, settings)
    return score_pairs(model, rows, cut, pad_id_of(tokenizer), batch_size=batch_size)


def perplexity(logps: np.ndarray, tokens: np.ndarray) -> float:
    """exp(Σ NLL / Σ tokens): the corpus perplexity of responses whose summed log-probs are ``logps``."""
    total = float(np.sum(tokens))
    return float(np.exp(-np.sum(logps) / total)) if total else float("nan")


# ---- one variant -------------------------------------------------------------------------------------------


def prompt_format_of(manifest: str | Path) -> str:
    """The base model's prompt format, which every variant is prompted in (see the module docstring)."""
    return str(read_manifest(manifest).get("prompt_format", "auto"))


@dataclass
class PersonaInputs:
    """What a persona evaluation puts to a model, as tokens: everything that depends on the texts, not on the
    weights. A revert sweep evaluates one model at hundreds of weight settings and tokenizes once."""

    persona: str
    prompts: list[str]
    prompt_tokens: list[list[int]]  # cut to leave room for the generation (encode_prompts)
    pair_ids: list[str]
    rows: list[tuple[Row, Row]]  # (persona row, general row) per pair
    cut: list[bool]
    pad_id: int


def persona_inputs(
    tokenizer,
    prompts: Sequence[str],
    pairs: Mapping[str, Sequence[Any]],
    persona: str,
    settings: TokenizeSettings,
    gen: GenerationSettings,
    *,
    lexicon: Mapping[str, Sequence[str]] = PERSONA_MARKERS,
) -> PersonaInputs:
    """Tokenize the prompts and pairs of :func:`evaluate_variant` (no prompts: no generation)."""
    if persona not in lexicon and persona != GENERAL_PERSONA:  # the general set has no markers of its own
        raise ConfluxError(f"no marker lexicon for persona {persona!r}; known: {sorted(lexicon)}")
    rows, cut = pair_rows(tokenizer, pairs["prompt"], pairs["persona"], pairs["general"], settings)
    return PersonaInputs(
        persona=persona,
        prompts=list(prompts),
        prompt_tokens=encode_prompts(tokenizer, prompts, gen, max_length=settings.max_length),
        pair_ids=list(pairs["pair_id"]),
        rows=rows,
        cut=cut,
        pad_id=pad_id_of(tokenizer),
    )


def evaluate_variant(
    model,
    tokenizer,
    prompts: Sequence[str],
    pairs: Mapping[str, Sequence[Any]],
    persona: str,
    settings: TokenizeSettings,
    gen: GenerationSettings,
    *,
    lexicon: Mapping[str, Sequence[str]] = PERSONA_MARKERS,
) -> dict[str, Any]:
    """Metrics and per-item values of one loaded model; ``pairs`` has pair_id, prompt, persona, general.

    No prompts: no generation (the style metrics then have n = 0), e.g. for a sweep that scores pairs only.
    """
    inputs = persona_inputs(tokenizer, prompts, pairs, persona, settings, gen, lexicon=lexicon)
    return evaluate_inputs(model, tokenizer, inputs, gen, lexicon=lexicon)


def evaluate_inputs(
    model,
    tokenizer,
    inputs: PersonaInputs,
    gen: GenerationSettings,
    *,
    lexicon: Mapping[str, Sequence[str]] = PERSONA_MARKERS,
    scoring: AbstractContextManager | None = None,
) -> dict[str, Any]:
    """:func:`evaluate_variant` on inputs tokenized beforehand: only the model's work (generate, score).
    ``scoring`` is entered around the scoring passes only (the revert sweep's layer reuse)."""
    answers = generate_ids(model, tokenizer, inputs.prompt_tokens, gen) if inputs.prompts else []
    counts = {
        style: [count_markers(text, markers) for text, _ in answers] for style, markers in lexicon.items()
    }
    with scoring if scoring is not None else nullcontext():
        lp = score_pairs(model, inputs.rows, inputs.cut, inputs.pad_id, batch_size=gen.batch_size)
    margin = lp["logp_a"] - lp["logp_b"]
    metrics = {
        "style": {style: style_summary(np.asarray(c)) for style, c in counts.items()},
        "persona_margin": {
            "mean": float(margin.mean()) if len(margin) else float("nan"),
            "accuracy": float((margin > 0).mean()) if len(margin) else float("nan"),
            "n": len(margin),
        },
        "perplexity_general": perplexity(lp["logp_b"], lp["tokens_b"]),
        "perplexity_persona": perplexity(lp["logp_a"], lp["tokens_a"]),
        "tokens_general": int(lp["tokens_b"].sum()),
        "truncated_pairs": int(lp["truncated"].sum()),
    }
    generations = [
        {"prompt": p, "text": text, "new_tokens": n, "markers": {s: counts[s][i] for s in counts}}
        for i, (p, (text, n)) in enumerate(zip(inputs.prompts, answers, strict=True))
    ]
    pair_items = [
        {
            "pair_id": pid,
            "logp_persona": float(lp["logp_a"][i]),
            "logp_general": float(lp["logp_b"][i]),
            "tokens_persona": int(lp["tokens_a"][i]),
            "tokens_general": int(lp["tokens_b"][i]),
            "truncated": bool(lp["truncated"][i]),
        }
        for i, pid in enumerate(inputs.pair_ids)
    ]
    return {"metrics": metrics, "generations": generations, "pairs": pair_items}


def persona_eval_job(
    *,
    variant: str,
    seed: int | None,
    manifest: str | Path,
    model_dir: str | Path | None,
    sft_eval: str | Path,
    pairs_eval: str | Path,
    out: str | Path,
    settings: TokenizeSettings,
    generation: GenerationSettings,
    lexicon: Mapping[str, Sequence[str]] = PERSONA_MARKERS,
) -> dict[str, Any]:
    """Evaluate one variant (the base model when ``model_dir`` is None) on a persona dataset's held-out part
    and write its metrics JSON atomically: :func:`persona_eval_variants_job` for one variant."""
    records = persona_eval_variants_job(
        variants={variant: model_dir},
        outs={variant: out},
        seed=seed,
        manifest=manifest,
        sft_eval=sft_eval,
        pairs_eval=pairs_eval,
        settings=settings,
        generation=generation,
        lexicon=lexicon,
    )
    return records[variant]


def persona_eval_variants_job(
    *,
    variants: Mapping[str, str | Path | None],
    outs: Mapping[str, str | Path],
    seed: int | None,
    manifest: str | Path,
    sft_eval: str | Path,
    pairs_eval: str | Path,
    settings: TokenizeSettings,
    generation: GenerationSettings,
    lexicon: Mapping[str, Sequence[str]] = PERSONA_MARKERS,
) -> dict[str, dict[str, Any]]:
    """Rules ``persona_eval_base`` (the base model), ``persona_eval`` (the trained variants of one seed) and
    ``persona_eval_merges`` (the SFT+DPO merges of one analysed seed): each variant to its own metrics JSON.

    One job for the variants of a seed because a job's start-up (torch, transformers, PEFT) outweighs one
    variant's generation and scoring on the tiny default; each variant is loaded on its own, as alone.

    Args:
        variants: per name shown in the table (``base``, ``sft``, ``dpo``, ``ties_lam0.5``, ...), a full model
            or PEFT adapter directory, or a TRL output holding ``model/``; ``None``: the base model.
        outs: per variant, the JSON to write.
        seed: the training seed of the variants (``None`` for the base model).
        sft_eval, pairs_eval: the held-out SFT rows (their prompts are generated from) and pairs.
    """
    if set(variants) != set(outs):
        raise ConfluxError(f"variants to evaluate {sorted(variants)} and metrics files {sorted(outs)} differ")
    persona, prompts, pairs = held_out_inputs(sft_eval, pairs_eval)
    base = read_manifest(manifest)  # once for every variant: its loader and its record
    prompt_format = prompt_format_of(manifest)
    records = {}
    for variant, model_dir in variants.items():
        model, tokenizer = load_variant(base, model_dir, dtype=working_dtype())
        model = to_work_device(model)
        result = evaluate_variant(
            model,
            tokenizer,
            prompts,
            pairs,
            persona,
            settings,
            generation,
            lexicon=lexicon,
        )
        record = {
            "variant": variant,
            "seed": seed,
            "persona": persona,
            "model_dir": str(model_dir) if model_dir is not None else None,
            "prompt_format": prompt_format,
            "base_pretrain": base.get("pretrain"),
            "generation": asdict(generation),
            "max_length": settings.max_length,
            "truncation": settings.truncation,
            "lexicon": {style: list(markers) for style, markers in lexicon.items()},
            **result,
        }
        write_json(outs[variant], record)
        log.info("%s (seed %s): %s -> %s", variant, seed, result["metrics"], outs[variant])
        records[variant] = record
        del model
    return records
