"""The embedded tiny base model: a small Llama with a byte-level BPE tokenizer, built offline.

The default workflow must run end to end on a laptop with no network, so instead of downloading a base model
it builds one: a tokenizer trained on the bundled text and a ``LlamaForCausalLM`` of a few hundred thousand
parameters, pretrained briefly on the bundled documents (:mod:`conflux.modeling.pretrain`) so that it speaks
the data's language before any preference or persona training starts. The output is an ordinary Hugging Face
directory (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...), so every later rule treats it
exactly like a ``local`` model and loads it with plain ``AutoModelForCausalLM`` / ``AutoTokenizer`` (no
conflux import, no remote code).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from conflux.atomic import atomic_path
from conflux.modeling.pretrain import Document, PretrainConfig, pretrain

if TYPE_CHECKING:  # torch, tokenizers and transformers load inside the functions: the workflow's config
    # parsing imports TinyModelConfig, and a dry run must not pay for them
    from transformers import LlamaConfig, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"
ROLE_TOKENS = ("<|user|>", "<|assistant|>", "<|system|>")
SPECIAL_TOKENS = (BOS, EOS, PAD, *ROLE_TOKENS)

# Each turn is "<|role|>\n{content}<|eos|>\n". Ending every turn (not only the assistant's) with eos keeps the
# template one line of Jinja, and the response's own eos is what log π(y|x) scores as the end of y.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|eos|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

INFO_FILE = "conflux_tiny.json"


@dataclass(frozen=True)
class TinyModelConfig:
    """Size of the embedded Llama (a few hundred thousand parameters at the defaults).

    ``vocab_size`` is the BPE trainer's target; the model's vocabulary is the trained tokenizer's real size,
    which is smaller when the corpus runs out of pairs seen at least twice.
    """

    vocab_size: int = 2048
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 176
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = False
    seed: int = 0
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def __post_init__(self) -> None:
        if isinstance(self.pretrain, dict):  # from the config file (and asdict round trips)
            object.__setattr__(self, "pretrain", PretrainConfig(**self.pretrain))

    def config_keys(self, vocab_size: int) -> dict[str, Any]:
        """The model's ``config.json`` size keys at a vocabulary size (the built model: the tokenizer's)."""
        return {
            "model_type": "llama",
            "vocab_size": vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
        }


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for ``transformers``.

    Byte level with the full 256-byte initial alphabet means any UTF-8 text (Japanese included) encodes and
    decodes exactly, even characters the corpus never showed: they fall back to their bytes, never to <unk>.

    Determinism: the same texts give byte-identical ``tokenizer.json``. The trainer counts words into a
    multiset and breaks ties between equally frequent pairs by token id, and the 256 byte symbols fix the
    first ids; checked with tokenizers 0.23 across processes, 1 vs 16 rayon threads and shuffled input order
    (tests/test_tinymodel.py pins it within one process), so no thread or ordering setting is needed.

    Args:
        texts: training text; the order does not matter, duplicates count as frequency.
        vocab_size: target vocabulary size, special tokens and the 256 byte symbols included.

    Returns:
        A ``PreTrainedTokenizerFast`` with bos/eos/pad set, right padding, and a role-token chat template.
    """
    corpus = list(texts)
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        chat_template=CHAT_TEMPLATE,
    )


def llama_config(cfg: TinyModelConfig, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """The ``LlamaConfig`` for ``cfg``, sized to the tokenizer's real vocabulary, with its special ids."""
    from transformers import LlamaConfig

    keys = cfg.config_keys(len(tokenizer))
    del keys["model_type"]  # LlamaConfig's own
    return LlamaConfig(
        **keys,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_tiny_model_job(cfg: TinyModelConfig, out_dir: str | Path) -> Path:
    """The ``build_tiny_model`` rule: the tiny model of ``cfg``, its tokenizer trained on the bundled corpus
    (persona sets and synthetic preference text, :func:`conflux.data.jobs.bundled_corpus`) and its weights
    pretrained on the bundled documents (:func:`conflux.data.jobs.pretrain_documents`)."""
    from conflux.data.jobs import bundled_corpus, pretrain_documents

    return build_tiny_model(
        bundled_corpus(seed=cfg.seed), cfg, out_dir, documents=pretrain_documents(seed=cfg.seed)
    )


def build_tiny_model(
    texts: Iterable[str],
    cfg: TinyModelConfig,
    out_dir: str | Path,
    *,
    documents: list[Document] | None = None,
) -> Path:
    """Train the tokenizer, initialise the Llama from ``cfg.seed``, pretrain it on ``documents`` when given
    (``cfg.pretrain``), and save both into ``out_dir`` atomically.

    The directory appears only when everything is written (a killed job leaves no half model for Snakemake to
    trust). Weights are safetensors only. ``conflux_tiny.json`` records the settings, the parameter count and
    the pretraining record (held-out reply perplexity) so a reader can tell what was built without loading it.

    Returns:
        ``out_dir`` as a ``Path``.
    """
    import torch
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    tokenizer.model_max_length = cfg.max_position_embeddings  # so truncation=True cuts at the model's limit
    config = llama_config(cfg, tokenizer)
    # Seed right before construction: weight init is the only randomness, so the same seed gives the same
    # tensors bit for bit on the same torch build.
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    pretrained = None
    if documents and cfg.pretrain.steps:
        pretrained = pretrain(model, tokenizer, documents, cfg.pretrain, seed=cfg.seed)
    with atomic_path(out, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info = {
            "tiny": asdict(cfg),
            "vocab_size": len(tokenizer),
            "n_parameters": n_params,
            "pretrain": pretrained,
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log.info(
        "built tiny Llama in %s: %d parameters, vocab %d (target %d), %d layers, hidden %d, seed %d",
        out,
        n_params,
        len(tokenizer),
        cfg.vocab_size,
        cfg.num_layers,
        cfg.hidden_size,
        cfg.seed,
    )
    return out
