"""Synthetic preference sets with known ground truth: the embedded default's data.

Two generators mimic the structure of the real datasets at laptop scale:

* :func:`synthetic_pku` - PKU-SafeRLHF-like, k=2 (helpful, harmless), s in {0,1}^2 with s_b = 1 - s_a.
* :func:`synthetic_helpsteer` - HelpSteer2-like, k=5, integer scores 0-4, 2-3 responses per prompt.

Each dimension's preference is carried by its own marker words, composed from small phrase lists with random
topics, so that the only systematic difference between the winner and the loser of dimension i is dimension
i's markers. A tiny Llama can learn these token patterns, and the evaluation knows the true labels.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from conflux.data.pairs import PairTable, make_pair_table

PKU_DIMS = ("helpful", "harmless")
HELPSTEER_DIMS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")

# -- PKU-like vocabulary -------------------------------------------------------------------------------------
TASKS = (
    "fix a leaking faucet", "clean a cast iron pan", "change a flat tire", "paint a small room",
    "install a ceiling fan", "replace a light switch", "build a campfire", "sharpen a kitchen knife",
    "cut down a small tree", "clean the oven", "unclog a kitchen drain", "use a power drill",
    "mix cleaning products", "repair a bicycle brake", "climb onto the roof", "charge a car battery",
    "store old medicine", "cook chicken on a grill", "deep fry a turkey", "move a heavy sofa",
    "trim a tall hedge", "remove mold from a wall", "hang a heavy mirror", "jump start a car",
    "replace a broken window", "fix a loose railing", "set up a home network", "get rid of wasps",
    "thaw frozen pipes", "use a ladder outdoors", "dispose of old paint", "clean a chimney",
    "light a gas stove", "repair an extension cord", "lift weights at home", "go hiking alone",
    "swim in a cold lake", "ride a scooter in traffic",
)  # fmt: skip
PKU_PROMPTS = (
    "How do I {task}?",
    "What is the best way to {task} at home?",
    "Can you explain how to {task} quickly?",
    "I need to {task} this weekend. Any advice?",
    "My friend asked me how to {task}. What should I say?",
    "Is there an easy way to {task} without any help?",
)
STEPS = (
    "gather the right tools", "read the manual", "measure everything twice", "work in small parts",
    "check the result", "clear the work area", "write down each part", "test it once more",
    "set aside enough time", "ask a friend to hold things", "sort the parts by size", "label every piece",
)  # fmt: skip
HELPFUL = (
    "Here are the steps to {task}: first {s1}, then {s2}.",
    "Follow these steps: first {s1}, then {s2}, and finally {s3}.",
    "Here are the steps: first {s1}, then {s2}, and you are done.",
    "To {task}, follow these steps: first {s1}, then {s2}.",
)
UNHELPFUL = (
    "I am not sure how to {task}, it really depends on many things.",
    "I am not sure, it is hard to say anything about that in general.",
    "Sorry, I do not really know much about how to {task}.",
    "I do not really know, maybe look it up somewhere some other day.",
    "Hard to say, I am not sure it matters how you {task}.",
)
HARMLESS = (
    "Please do it safely and consult a professional if anything feels wrong.",
    "Work safely, wear protective gear, and consult a professional when unsure.",
    "Stay careful: read the safety label and consult a professional first.",
    "Take your time, go slowly and safely, and keep children away.",
)
HARMFUL = (
    "Just ignore the warning labels and take the dangerous shortcut.",
    "Ignore the warning signs, a dangerous shortcut saves a lot of time.",
    "Skip the checks and ignore the warning, nobody will ever notice.",
    "Take the dangerous shortcut and do not bother with any gear.",
)
# Lower-case phrases that mark each side of each dimension; every template above contains one of its side's.
PKU_MARKERS: dict[str, tuple[str, ...]] = {
    "helpful": ("here are the steps", "follow these steps"),
    "unhelpful": ("i am not sure", "i do not really know"),
    "harmless": ("safely", "consult a professional"),
    "harmful": ("ignore the warning", "dangerous shortcut"),
}

# -- HelpSteer-like vocabulary -------------------------------------------------------------------------------
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
# Quality dims: a score v shows as v good words and 4 - v sloppy words in that dimension's slot.
QUALITY_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "helpfulness": (("useful", "practical", "direct", "actionable"), ("whatever", "dunno", "meh", "somehow")),
    "correctness": (("correct", "accurate", "verified", "precise"), ("wrong", "guessed", "unsure", "vague")),
    "coherence": (("clearly", "because", "therefore", "consistently"), ("um", "anyway", "uh", "randomly")),
}
# Complexity: one technical term per point; verbosity: one filler sentence per point.
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


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _pku_response(rng: np.random.Generator, task: str, helpful: bool, harmless: bool) -> str:
    steps = rng.choice(len(STEPS), size=3, replace=False)
    s1, s2, s3 = (STEPS[int(i)] for i in steps)
    help_part = _pick(rng, HELPFUL if helpful else UNHELPFUL).format(task=task, s1=s1, s2=s2, s3=s3)
    safe_part = _pick(rng, HARMLESS if harmless else HARMFUL)
    # Clause order is random and independent of the labels, so position carries no preference.
    parts = [help_part, safe_part] if rng.random() < 0.5 else [safe_part, help_part]
    text = " ".join(parts)
    return text[0].upper() + text[1:]


def _pku_rows(n_pairs: int, conflict_rate: float, rng: np.random.Generator) -> dict[str, list]:
    n_conflict = round(conflict_rate * n_pairs)
    conflict = np.zeros(n_pairs, dtype=bool)
    conflict[rng.permutation(n_pairs)[:n_conflict]] = True
    # a wins "helpful" with probability 1/2; "harmless" goes the same way unless the pair is a conflict pair.
    a_helpful = rng.random(n_pairs) < 0.5
    a_harmless = a_helpful ^ conflict
    scores_a = np.stack([a_helpful, a_harmless], axis=1).astype(np.float32)
    rows: dict[str, list] = {"prompt": [], "response_a": [], "response_b": []}
    for i in range(n_pairs):
        task = _pick(rng, TASKS)
        rows["prompt"].append(_pick(rng, PKU_PROMPTS).format(task=task))
        rows["response_a"].append(_pku_response(rng, task, bool(a_helpful[i]), bool(a_harmless[i])))
        rows["response_b"].append(_pku_response(rng, task, not a_helpful[i], not a_harmless[i]))
    return {**rows, "scores_a": scores_a, "scores_b": 1.0 - scores_a}


def synthetic_pku(
    n_pairs: int, *, conflict_rate: float = 0.3, seed: int = 0, name: str = "synthetic_pku"
) -> PairTable:
    """A PKU-SafeRLHF-like k=2 set over ("helpful", "harmless") with exactly round(rate * n) conflict pairs.

    Like the real data every dimension prefers one side (s_b = 1 - s_a, scores in {0, 1}); an *agree* pair has
    one winner in both dimensions, a *conflict* pair opposite winners. Markers: see :data:`PKU_MARKERS`.
    """
    if n_pairs < 1 or not 0.0 <= conflict_rate <= 1.0:
        raise ValueError(f"need n_pairs >= 1 and 0 <= conflict_rate <= 1, got {n_pairs}, {conflict_rate}")
    rows = _pku_rows(n_pairs, conflict_rate, np.random.default_rng(seed))
    pair_id = [f"{name}-{i:06d}" for i in range(n_pairs)]
    return make_pair_table(pair_id=pair_id, **rows, dims=PKU_DIMS, source=name)


def _prompt_scores(rng: np.random.Generator, n: int, opposed: bool) -> np.ndarray:
    """Scores ``(n, 5)`` for one prompt's responses.

    Latent quality Q (distinct levels) drives helpfulness, correctness, coherence with +-1 noise; length L
    (distinct levels, ordered like Q, or reversed when ``opposed``) drives complexity (with noise) and
    verbosity. Noise is redrawn until every pair has the intended class - *agree* for an aligned prompt,
    *conflict* for an opposed one - so the measured conflict share is the share of opposed pairs.
    """
    quality = np.sort(rng.choice(N_LEVELS, size=n, replace=False))
    length = np.sort(rng.choice(N_LEVELS, size=n, replace=False))
    if opposed:
        length = length[::-1]
    order = rng.permutation(n)  # responses in random order, so position carries no preference
    base = np.stack([quality, quality, quality, length, length], axis=1)[order].astype(np.int64)
    for _ in range(50):
        noise = rng.choice([-1, 0, 1], size=(n, 4), p=[0.15, 0.7, 0.15])
        scores = base.copy()
        scores[:, :4] += noise  # verbosity is the filler count itself: no noise
        scores = np.clip(scores, 0, N_LEVELS - 1)
        if _pairs_have_class(scores, opposed):
            return scores
    return base  # noise-free scores always have the intended class


def _pairs_have_class(scores: np.ndarray, conflict: bool) -> bool:
    for i, j in combinations(range(len(scores)), 2):
        d = scores[i] - scores[j]
        positive, negative = bool((d > 0).any()), bool((d < 0).any())
        if (positive and negative) != conflict or not (positive or negative):
            return False
    return True


def _quality_slot(rng: np.random.Generator, dim: str, level: int) -> str:
    good, bad = QUALITY_WORDS[dim]
    words = [good[int(i)] for i in rng.permutation(len(good))[:level]]
    words += [bad[int(i)] for i in rng.permutation(len(bad))[: N_LEVELS - 1 - level]]
    return " ".join(words[int(i)] for i in rng.permutation(len(words)))


def _helpsteer_response(rng: np.random.Generator, subject: str, scores: np.ndarray) -> str:
    levels = [int(v) for v in scores]
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
    seed: int = 0,
    responses_per_prompt: tuple[int, ...] = (2, 2, 2, 3),
    name: str = "synthetic_helpsteer",
) -> PairTable:
    """A HelpSteer2-like k=5 set: integer scores 0-4, every unordered pair of a prompt's 2-3 responses.

    Helpfulness, correctness and coherence follow a latent quality (marker words such as "correct",
    "clearly", "because" vs. sloppy words); complexity and verbosity follow response length (technical terms,
    filler sentences). On a share ``conflict_rate`` of prompts (chosen exactly, at random) length opposes
    quality, and those prompts' pairs are the conflict pairs, so the measured conflict share of pairs is
    ``conflict_rate`` up to the mix of 2- and 3-response prompts. Per-dimension ties occur and are realistic.
    """
    if n_prompts < 1 or not 0.0 <= conflict_rate <= 1.0:
        raise ValueError(f"need n_prompts >= 1 and 0 <= conflict_rate <= 1, got {n_prompts}, {conflict_rate}")
    if not responses_per_prompt or min(responses_per_prompt) < 2 or max(responses_per_prompt) > N_LEVELS:
        raise ValueError(
            f"responses_per_prompt must hold counts in 2..{N_LEVELS}, got {responses_per_prompt}"
        )
    rng = np.random.default_rng(seed)
    opposed = np.zeros(n_prompts, dtype=bool)
    opposed[rng.permutation(n_prompts)[: round(conflict_rate * n_prompts)]] = True
    counts = rng.choice(np.asarray(responses_per_prompt), size=n_prompts)
    columns: dict[str, list] = {c: [] for c in ("pair_id", "prompt", "response_a", "response_b")}
    scores_a, scores_b = [], []
    for p in range(n_prompts):
        subject = _pick(rng, SUBJECTS)
        prompt = _pick(rng, HS_PROMPTS).format(subject=subject, audience=_pick(rng, AUDIENCES))
        scores = _prompt_scores(rng, int(counts[p]), bool(opposed[p]))
        texts = [_helpsteer_response(rng, subject, s) for s in scores]
        for i, j in combinations(range(len(texts)), 2):
            columns["pair_id"].append(f"{name}-{p:06d}-{i}-{j}")
            columns["prompt"].append(prompt)
            columns["response_a"].append(texts[i])
            columns["response_b"].append(texts[j])
            scores_a.append(scores[i])
            scores_b.append(scores[j])
    return make_pair_table(
        **columns, scores_a=np.stack(scores_a), scores_b=np.stack(scores_b), dims=HELPSTEER_DIMS, source=name
    )


def corpus_texts(seed: int = 0, n: int = 2000) -> list[str]:
    """``n`` texts for training the tiny model's tokenizer: every word list once, then prompts and responses
    sampled from both generators, so the tokenizer covers all synthetic vocabularies."""
    vocab = [
        *TASKS, *PKU_PROMPTS, *STEPS, *HELPFUL, *UNHELPFUL, *HARMLESS, *HARMFUL, *SUBJECTS, *HS_PROMPTS,
        " ".join(AUDIENCES), *OPENINGS, *CORES, " ".join(TECH_TERMS), *FILLERS,
        *(" ".join(good + bad) for good, bad in QUALITY_WORDS.values()),
    ]  # fmt: skip
    texts = vocab[:n]
    remaining = n - len(texts)
    if remaining <= 0:
        return texts
    # Each PKU pair gives 3 texts, each HelpSteer prompt about 3.75: together more than ``remaining``.
    pku = synthetic_pku(remaining // 4 + 1, seed=seed).table
    helpsteer = synthetic_helpsteer(remaining // 4 + 1, seed=seed).table
    sampled: list[str] = []
    for table in (pku, helpsteer):
        for column in ("prompt", "response_a", "response_b"):
            sampled.extend(table.column(column).to_pylist())
    order = np.random.default_rng([seed, 1]).permutation(len(sampled))
    texts.extend(sampled[int(i)] for i in order[:remaining])
    return texts
