"""The policy π(y; w) on a tiny random Llama, and sequence log-probs on a toy word-level tokenizer."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from conflux.modeling.logprobs import sequence_logps
from conflux.modeling.lora import LoraSpec
from conflux.modeling.policy import PreferencePolicy
from reference_impl import merged_delta, policy_at, tokenize_pairs

VOCAB = 128
CORPUS = [
    "the cat sat on the mat and looked at the dog",
    "a helpful answer is kind and safe and short",
    "please tell me how to bake bread at home today",
    "you should mix flour water salt and yeast then wait",
    "i will not help with that request because it is harmful",
]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture
def base() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).eval()


def _toy_tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(vocab_size=VOCAB, special_tokens=specials))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", bos_token="[BOS]", unk_token="[UNK]"
    )
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


@pytest.fixture
def tokenizer() -> PreTrainedTokenizerFast:
    return _toy_tokenizer(chat=False)


@pytest.fixture
def chat_tokenizer() -> PreTrainedTokenizerFast:
    return _toy_tokenizer(chat=True)


def _perturb(policy: PreferencePolicy, seed: int = 1) -> None:
    """LoRA B starts at zero; give every adapter a non-trivial delta."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _merged_model(base_copy: LlamaForCausalLM, delta: dict[str, torch.Tensor]) -> LlamaForCausalLM:
    merged = copy.deepcopy(base_copy)
    state = merged.state_dict()
    for name, d in delta.items():
        state[name] += d
    merged.load_state_dict(state)
    return merged


def _scalings(policy: PreferencePolicy) -> list[dict[str, float]]:
    return [dict(m.scaling) for m in policy.model.modules() if isinstance(m, LoraLayer)]


IDS = torch.randint(0, VOCAB, (3, 9), generator=torch.Generator().manual_seed(7))


def test_w_zero_equals_shared_only(base):
    policy = PreferencePolicy.create(base, 2, LoraSpec(), seed=0)
    _perturb(policy)
    with policy.at([0.0, 0.0]) as model:
        at_zero = _logits(model, IDS)
    policy.model.base_model.set_adapter("shared")  # plain PEFT: only shared active at its own α/r
    shared_only = _logits(policy.model, IDS)
    assert torch.equal(at_zero, shared_only)
    with policy.reference() as model:
        assert not torch.allclose(_logits(model, IDS), at_zero)


def test_w_zero_without_shared_is_exactly_the_reference(base):
    original = copy.deepcopy(base)
    policy = PreferencePolicy.create(base, 2, LoraSpec(), shared=False, seed=0)
    _perturb(policy)
    with policy_at(policy, torch.zeros(2)) as model:
        at_zero = _logits(model, IDS)
    with policy.reference() as model:
        reference = _logits(model, IDS)
    assert torch.equal(at_zero, reference)
    assert torch.equal(reference, _logits(original, IDS))


W_GRID = [(1.0, 0.0), (0.0, 1.0), (0.3, 0.7), (0.5, 0.5), (-0.4, 1.3)]


@pytest.mark.parametrize(
    ("shared", "spec"), [(True, LoraSpec()), (False, LoraSpec(r=16, alpha=32))], ids=["curriculum", "soup"]
)
def test_interpolation_equals_merged_weights(base, shared, spec):
    original = copy.deepcopy(base)
    policy = PreferencePolicy.create(base, 2, spec, shared=shared, seed=0)
    _perturb(policy)
    random_w = [tuple(torch.rand(2, generator=torch.Generator().manual_seed(s)).tolist()) for s in range(3)]
    for w in W_GRID + random_w:
        with policy.at(w) as model:
            got = _logits(model, IDS)
        want = _logits(_merged_model(original, merged_delta(policy, w)), IDS)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert set(policy.adapter_names) == ({"shared"} if shared else set()) | {"dim0", "dim1"}


def test_at_restores_scalings_on_exit_exception_and_nesting(base):
    policy = PreferencePolicy.create(base, 2, LoraSpec(), seed=0)
    before, active = _scalings(policy), list(policy.model.base_model.active_adapters)
    with policy.at([0.3, 0.7]):
        outer = _scalings(policy)
        assert outer[0]["dim0"] == pytest.approx(0.3 * 16 / 8)
        assert outer[0]["shared"] == pytest.approx(2.0)
        with policy.at([1.0, 0.0]):
            assert _scalings(policy)[0]["dim0"] == pytest.approx(2.0)
            assert policy.model.base_model.active_adapters == ["shared", "dim0"]
        assert _scalings(policy) == outer
    assert _scalings(policy) == before
    with pytest.raises(RuntimeError, match="boom"), policy.at([0.9, 0.1]):
        raise RuntimeError("boom")
    assert _scalings(policy) == before
    assert list(policy.model.base_model.active_adapters) == active
    with pytest.raises(ValueError, match="k=2"), policy.at([1.0]):
        pass


def test_train_only_controls_gradients_separately_from_activation(base):
    policy = PreferencePolicy.create(base, 2, LoraSpec(), seed=0)
    _perturb(policy)
    policy.train_only(["dim1"])
    with policy.reference():
        pass
    assert {n for n, p in policy.model.named_parameters() if p.requires_grad} == {
        n for n, _ in policy.model.named_parameters() if ".dim1." in n
    }  # disable_adapter's exit re-enables grads on every active adapter; the policy must undo that
    with policy.at([0.5, 0.5]) as model:  # activation must not make shared or dim0 trainable
        model(input_ids=IDS).logits.square().mean().backward()
    params = dict(policy.model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    assert trainable and all(".dim1." in n and "lora_" in n for n in trainable)
    assert trainable == {n for n in params if ".dim1." in n}
    for name, p in params.items():
        if name in trainable:
            assert p.grad is not None and torch.isfinite(p.grad).all()
        else:
            assert p.grad is None, name
    assert len(policy.trainable_parameters()) == len(trainable)


def test_create_is_deterministic_under_seed(base):
    first = PreferencePolicy.create(copy.deepcopy(base), 2, LoraSpec(), seed=3).adapter_state("dim0")
    again = PreferencePolicy.create(copy.deepcopy(base), 2, LoraSpec(), seed=3).adapter_state("dim0")
    other = PreferencePolicy.create(copy.deepcopy(base), 2, LoraSpec(), seed=4).adapter_state("dim0")
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if "lora_A" in k)


def test_saved_adapter_loads_with_plain_peft(base, tmp_path):
    original = copy.deepcopy(base)
    policy = PreferencePolicy.create(base, 2, LoraSpec(), shared=False, seed=0)
    _perturb(policy)
    out = tmp_path / "adapters"
    policy.save(out)
    for name in ("dim0", "dim1"):
        assert (out / name / "adapter_config.json").is_file()
        assert (out / name / "adapter_model.safetensors").is_file()
    with policy.at([1.0, 0.0]) as model:
        want = _logits(model, IDS)
    plain = PeftModel.from_pretrained(copy.deepcopy(original), out / "dim0", adapter_name="dim0")
    torch.testing.assert_close(_logits(plain, IDS), want, atol=1e-6, rtol=0)

    loaded = PreferencePolicy.load(copy.deepcopy(original), {n: out / n for n in ("dim0", "dim1")})
    assert loaded.k == 2 and not loaded.has_shared
    state, again = policy.adapter_state("dim1"), loaded.adapter_state("dim1")
    assert all(torch.equal(state[k], again[k]) for k in state)
    with loaded.at([0.3, 0.7]) as m1, torch.no_grad():
        got = m1(input_ids=IDS).logits
    with policy.at([0.3, 0.7]) as m2:
        torch.testing.assert_close(got, _logits(m2, IDS), atol=1e-6, rtol=0)


# --- log-probs ------------------------------------------------------------------------------------------


def _manual_logp(model, prompt_ids: list[int], response_ids: list[int]) -> float:
    """Σ_t log p(y_t | x, y_<t) with an explicit loop over response positions, on the unpadded row alone."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    total = 0.0
    for t in range(len(prompt_ids), len(prompt_ids) + len(response_ids)):
        total += logprobs[t - 1, ids[0, t]].item()
    return total


def _row(batch, i: int) -> tuple[list[int], list[int]]:
    ids, loss = batch.input_ids[i], batch.loss_mask[i]
    n = int(batch.attention_mask[i].sum())
    start = int(loss.nonzero()[0])
    return ids[:start].tolist(), ids[start:n].tolist()


def test_sequence_logps_equals_manual_loop_and_masks_prompt(base, tokenizer):
    prompts = ["please tell me how to bake bread", "the cat sat"]
    a = ["mix flour water salt and yeast", "on the mat"]
    b = ["i will not help", "and looked at the dog today"]
    batch, n_cut = tokenize_pairs(tokenizer, prompts, a, b, max_length=64)
    assert n_cut == 0 and batch.input_ids.shape[0] == 4 and batch.n_pairs == 2
    with torch.no_grad():
        logp_a, logp_b = sequence_logps(base, batch)
    for i, value in enumerate(torch.cat([logp_a, logp_b])):
        prompt, response = _row(batch, i)
        assert response[-1] == tokenizer.eos_token_id
        assert prompt == tokenizer(prompts[i % 2])["input_ids"]  # exactly the prompt is masked out
        assert value.item() == pytest.approx(_manual_logp(base, prompt, response), abs=1e-5)

    # The prompt's last token enters only as conditioning: the counted tokens stay the same, the value moves.
    changed, _ = tokenize_pairs(tokenizer, ["please tell me how to bake cat"], a[:1], b[:1], max_length=64)
    assert torch.equal(changed.loss_mask, batch.loss_mask[[0, 2], : changed.loss_mask.shape[1]])
    with torch.no_grad():
        new_a, _ = sequence_logps(base, changed)
    prompt, response = _row(changed, 0)
    assert new_a.item() != pytest.approx(logp_a[0].item(), abs=1e-4)
    assert new_a.item() == pytest.approx(_manual_logp(base, prompt, response), abs=1e-5)


def test_padding_does_not_change_a_rows_logp(base, tokenizer):
    alone, _ = tokenize_pairs(tokenizer, ["the cat"], ["sat"], ["on"], max_length=64)
    padded, _ = tokenize_pairs(
        tokenizer,
        ["the cat", "please tell me how to bake bread at home today"],
        ["sat", "you should mix flour water salt and yeast then wait"],
        ["on", "i will not help with that request because it is harmful"],
        max_length=64,
    )
    assert padded.input_ids.shape[1] > alone.input_ids.shape[1]
    assert (padded.input_ids[0, alone.input_ids.shape[1] :] == tokenizer.pad_token_id).all()
    with torch.no_grad():
        a1, b1 = sequence_logps(base, alone)
        a2, b2 = sequence_logps(base, padded)
    torch.testing.assert_close(a2[:1], a1, atol=1e-5, rtol=0)
    torch.testing.assert_close(b2[:1], b1, atol=1e-5, rtol=0)


def test_truncation_drops_prompt_start_first_and_counts_rows(tokenizer):
    prompt = "please tell me how to bake bread at home today"  # 10 tokens
    batch, n_cut = tokenize_pairs(tokenizer, [prompt], ["a helpful answer"], ["no"], max_length=8)
    assert n_cut == 2  # both rows lost prompt tokens; the prompt is cut once per pair
    prompt_ids = tokenizer(prompt)["input_ids"]
    for i, response in enumerate(["a helpful answer", "no"]):
        kept_prompt, kept_response = _row(batch, i)
        assert kept_response == [*tokenizer(response, add_special_tokens=False)["input_ids"], 3]
        assert kept_prompt == prompt_ids[-4:]  # same context for both: 8 − len("a helpful answer" + eos)
    assert batch.input_ids.shape[1] == 8

    # A response longer than max_length keeps one prompt token and loses its end.
    long, n_cut = tokenize_pairs(tokenizer, [prompt], [" ".join(CORPUS[0].split())], ["no"], max_length=5)
    kept_prompt, kept_response = _row(long, 0)
    assert n_cut == 2 and kept_prompt == prompt_ids[-1:] and len(kept_response) == 4
    _, n_cut = tokenize_pairs(tokenizer, ["the cat"], ["sat"], ["on"], max_length=5)
    assert n_cut == 0


def test_chat_template_used_when_present(tokenizer, chat_tokenizer):
    user, assistant = chat_tokenizer.convert_tokens_to_ids(["<|user|>", "<|assistant|>"])
    chat, _ = tokenize_pairs(chat_tokenizer, ["the cat"], ["sat"], ["on"], max_length=32)
    prompt, _ = _row(chat, 0)
    assert prompt[:2] == [chat_tokenizer.bos_token_id, user]
    assert prompt[-1] == assistant
    plain, _ = tokenize_pairs(tokenizer, ["the cat"], ["sat"], ["on"], max_length=32)
    prompt, _ = _row(plain, 0)
    assert user not in prompt and assistant not in prompt and prompt == tokenizer("the cat")["input_ids"]
