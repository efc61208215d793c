"""Our DPO pipeline (tokenize, sequence log-probs, loss) against TRL's DPOTrainer on one model and batch."""

from __future__ import annotations

import copy

import pytest
import torch

from conflux.data.jobs import bundled_corpus
from conflux.data.synthetic import synthetic_pku
from conflux.modeling.logprobs import sequence_logps
from conflux.modeling.tiny_model import TinyModelConfig, build_tiny_model
from reference_impl import dpo_loss, tokenize_pairs


@pytest.fixture(scope="module")
def model_and_tokenizer(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("parity") / "hf"
    build_tiny_model(bundled_corpus(seed=0), TinyModelConfig(vocab_size=800), out)
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), AutoTokenizer.from_pretrained(out)


def test_dpo_loss_equals_trl_dpo_trainer_on_the_same_model_and_batch(model_and_tokenizer, tmp_path):
    """TRL tokenizes, runs policy and reference and computes its sigmoid loss; we do the same through
    conflux.modeling.logprobs + conflux.training.losses. The reference is a perturbed copy, so the loss is not
    simply log 2."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tokenizer = model_and_tokenizer
    # TRL applies a chat template only to conversational datasets ([{"role": ...}]); conflux applies the
    # tokenizer's template to every prompt. Plain prompts on both sides give both the same tokens.
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = None
    reference = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02)

    pairs = synthetic_pku(8, conflict_rate=0.0, seed=3).table.to_pydict()
    prompts, chosen, rejected = pairs["prompt"], pairs["response_a"], pairs["response_b"]
    beta = 0.1
    data = Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    args = DPOConfig(
        output_dir=str(tmp_path),
        beta=beta,
        max_length=512,
        report_to=[],
        use_cpu=True,
        per_device_train_batch_size=8,
        disable_dropout=True,
    )
    trainer = DPOTrainer(
        model=model, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    model.eval()
    with torch.no_grad():
        trl = trainer.compute_loss(model, batch).item()

        ours_batch, n_cut = tokenize_pairs(tokenizer, prompts, chosen, rejected, max_length=512)
        assert n_cut == 0
        pol_c, pol_r = sequence_logps(model, ours_batch)
        ref_c, ref_r = sequence_logps(reference.eval(), ours_batch)
        losses, _, _ = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta)
    assert abs(trl - 0.6931) > 1e-3  # a loss that depends on the models
    assert losses.mean().item() == pytest.approx(trl, abs=1e-5)
