"""The HelpSteer2-like synthetic set (k=5): one response pair per prompt, scores 0-4, known ground truth.

Structure (the curriculum paper's, see :mod:`conflux.data.synthetic` for the PKU-like twin):

* **Agree pairs are the majority** (exactly ``round(conflict_rate * n)`` conflict pairs). In an agree pair one
  response is at least as good in every dimension (margins of 0-2 levels, at least one positive).
* In a **conflict pair** each dimension independently prefers a or b (resampled until both sides occur), with
  margins of 1-3 levels (ties 10%), so every dimension pair is opposed in about half of the conflict pairs and
  all 10 pairs of Table 2 are covered.
* **Signal strength per dimension** (``signal``): the probability that a dimension's score difference shows
  in the text at all. A hidden dimension renders both responses at the lower of the two levels, so the text
  carries no evidence for it. Quality dimensions (helpfulness, correctness, coherence) show a level v as v
  good and 4 - v sloppy words in their slot; complexity as v technical terms; verbosity as v filler sentences.
* **The shortcut**: ``verbosity`` (response length, as in the real HelpSteer2, where length predicts ratings)
  is visible in every pair by default, so on agree pairs it predicts every dimension's label; the other
  dimensions are visible in 60% of pairs and only where dimensions conflict does it matter which is which.

Oracle: reading dimension i's words gives its label on exactly the pairs where i is visible (``signal[i]``,
a hidden dimension leaves a zero margin, which counts as wrong); a setting (a, b, w) is decided by the text
when every dimension with nonzero weight and a nonzero difference is visible.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from conflux.data.pairs import PairTable, make_pair_table

HELPSTEER_DIMS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
HELPSTEER_SIGNAL: dict[str, float] = {
    "helpfulness": 0.6, "correctness": 0.6, "coherence": 0.6, "complexity": 0.6, "verbosity": 1.0,
}  # fmt: skip

SUBJECTS = (
    "photosynthesis", "compound interest", "the water cycle", "black holes", "volcanoes", "vaccines",
    "the stock market", "machine learning", "climate change", "the immune system", "plate tectonics",
    "inflation", "the French revolution", "renewable energy", "the human heart", "ocean tides",
    "sleep cycles", "the printing press", "electric cars", "honey bees", "the moon landing", "rainbows",
    "credit scores", "the internet", "coffee roasting", "marathon training", "bread baking", "recycling",
    "solar panels", "the Roman empire", "earthquakes", "chess openings", "dinosaurs", "hurricanes",
)  # fmt: skip
HS_PROMPTS = (
    "Explain {subject} in simple terms for a {audience}.",
    "What should a {audience} know about {subject}?",
    "Give me a short overview of {subject}.",
    "Why does {subject} matter to a {audience}?",
    "Can you describe how {subject} works?",
    "Write a few sentences about {subject} for a {audience}.",
)
AUDIENCES = ("student", "beginner", "child", "manager", "friend", "teacher", "retiree", "new employee")
OPENINGS = ("About {subject}:", "Regarding {subject}:", "On {subject}:", "Here is my take on {subject}:")
CORES = (
    "it comes down to a few basic ideas.",
    "the main point is how the parts work together.",
    "it is easier to understand with one example.",
    "it changes slowly over a long time.",
    "people study it to make better choices.",
    "the key is to look at cause and effect.",
)
# Quality dims: a level v shows as v good words and 4 - v sloppy words in that dimension's slot.
QUALITY_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "helpfulness": (("useful", "practical", "direct", "actionable"), ("whatever", "dunno", "meh", "somehow")),
    "correctness": (("correct", "accurate", "verified", "precise"), ("wrong", "guessed", "unsure", "vague")),
    "coherence": (("clearly", "because", "therefore", "consistently"), ("um", "anyway", "uh", "randomly")),
}
# Complexity: one technical term per level; verbosity: one filler sentence per level.
TECH_TERMS = (
    "algorithm", "parameter", "heuristic", "coefficient", "variance", "protocol", "framework", "latency",
    "entropy", "equilibrium", "gradient", "topology", "catalyst", "derivative", "isotope", "amortization",
)  # fmt: skip
FILLERS = (
    "Let me add a little more here.", "There is more to say about this.", "This point deserves extra words.",
    "I will repeat that for emphasis.", "To say it once again in other words.", "That is worth noting too.",
    "And there is even a bit more.", "Some would explain it at length.",
)  # fmt: skip
N_LEVELS = 5  # scores 0..4


def signal_vector(signal: Mapping[str, float] | None, dims: tuple[str, ...], default: Mapping[str, float]):
    """Per-dimension visibility probabilities in ``dims`` order; unknown names and values outside [0, 1] fail
    naming the key."""
    merged = {**default, **(signal or {})}
    for name, value in merged.items():
        if name not in dims:
            raise ValueError(f"signal.{name}: not a dimension of this generator (dimensions: {list(dims)})")
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"signal.{name}: must be in [0, 1], got {value}")
    return np.array([float(merged[d]) for d in dims])


def _margins(rng: np.random.Generator, conflict: bool, k: int) -> np.ndarray:
    """Signed level differences a - b of one pair (the agree winner is put on side a; the caller swaps)."""
    if not conflict:
        while True:
            m = rng.choice(3, size=k, p=[0.15, 0.6, 0.25])
            if m.any():
                return m
    while True:
        sign = rng.choice([-1, 1], size=k) * (rng.random(k) >= 0.1)  # 10% ties per dimension
        if (sign > 0).any() and (sign < 0).any():
            return sign * rng.choice([1, 2, 3], size=k, p=[0.5, 0.35, 0.15])


def _levels(rng: np.random.Generator, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Levels (a, b) in 0..4 with a - b = d: the lower one uniform over what leaves room for the margin."""
    low = np.array([int(rng.integers(N_LEVELS - abs(int(x)))) for x in d])
    return low + np.maximum(d, 0), low + np.maximum(-d, 0)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _quality_slot(rng: np.random.Generator, dim: str, level: int) -> str:
    good, bad = QUALITY_WORDS[dim]
    words = [good[int(i)] for i in rng.permutation(len(good))[:level]]
    words += [bad[int(i)] for i in rng.permutation(len(bad))[: N_LEVELS - 1 - level]]
    return " ".join(words[int(i)] for i in rng.permutation(len(words)))


def _helpsteer_response(rng: np.random.Generator, subject: str, levels: np.ndarray) -> str:
    levels = [int(v) for v in levels]
    slots = [_quality_slot(rng, dim, level) for dim, level in zip(QUALITY_WORDS, levels[:3], strict=True)]
    complexity, verbosity = levels[3:]
    parts = [
        _pick(rng, OPENINGS).format(subject=subject),
        _pick(rng, CORES),
        f"In short: {', '.join(slots)}.",
    ]
    if complexity:
        terms = [TECH_TERMS[int(i)] for i in rng.choice(len(TECH_TERMS), size=complexity, replace=False)]
        parts.append(f"Key terms: {', '.join(terms)}.")
    parts += [FILLERS[int(i)] for i in rng.choice(len(FILLERS), size=verbosity, replace=False)]
    return " ".join(parts)


def synthetic_helpsteer(
    n_prompts: int,
    *,
    conflict_rate: float = 0.3,
    signal: Mapping[str, float] | None = None,
    seed: int = 0,
    name: str = "synthetic_helpsteer",
) -> PairTable:
    """A HelpSteer2-like k=5 set of ``n_prompts`` prompts with one scored response pair each (see the module
    docstring for the ground truth). ``signal`` overrides :data:`HELPSTEER_SIGNAL` per dimension."""
    if n_prompts < 1 or not 0.0 <= conflict_rate <= 1.0:
        raise ValueError(f"need n_prompts >= 1 and 0 <= conflict_rate <= 1, got {n_prompts}, {conflict_rate}")
    visible_p = signal_vector(signal, HELPSTEER_DIMS, HELPSTEER_SIGNAL)
    rng = np.random.default_rng(seed)
    k = len(HELPSTEER_DIMS)
    conflict = np.zeros(n_prompts, dtype=bool)
    conflict[rng.permutation(n_prompts)[: round(conflict_rate * n_prompts)]] = True
    columns: dict[str, list] = {c: [] for c in ("pair_id", "prompt", "response_a", "response_b")}
    scores_a, scores_b = [], []
    for p in range(n_prompts):
        subject = _pick(rng, SUBJECTS)
        d = _margins(rng, bool(conflict[p]), k)
        if not conflict[p] and rng.random() < 0.5:
            d = -d  # the agree winner on either side, so position carries no preference
        sa, sb = _levels(rng, d)
        visible = rng.random(k) < visible_p
        # A hidden dimension shows both responses at the lower level: the text holds no trace of its label.
        shown_a, shown_b = (
            np.where(visible, sa, np.minimum(sa, sb)),
            np.where(visible, sb, np.minimum(sa, sb)),
        )
        columns["pair_id"].append(f"{name}-{p:06d}")
        columns["prompt"].append(
            _pick(rng, HS_PROMPTS).format(subject=subject, audience=_pick(rng, AUDIENCES))
        )
        columns["response_a"].append(_helpsteer_response(rng, subject, shown_a))
        columns["response_b"].append(_helpsteer_response(rng, subject, shown_b))
        scores_a.append(sa)
        scores_b.append(sb)
    return make_pair_table(
        **columns, scores_a=np.stack(scores_a), scores_b=np.stack(scores_b), dims=HELPSTEER_DIMS, source=name
    )


def rendered_levels(text: str) -> np.ndarray:
    """The five levels a response's text shows (the inverse of the rendering; for tests and the oracle)."""
    lower = text.lower()
    words = set(lower.replace(",", " ").replace(".", " ").replace(":", " ").split())
    levels = [sum(w in words for w in good) for good, _ in QUALITY_WORDS.values()]
    levels.append(sum(term in words for term in TECH_TERMS))
    levels.append(sum(filler.lower() in lower for filler in FILLERS))
    return np.array(levels)
