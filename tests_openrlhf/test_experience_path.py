"""SAE on OpenRLHF 0.11.2's own experience path, on the CPU.

OpenRLHF's trainer has no CPU path (DeepSpeed calls torch.cuda.set_device, generation is vLLM
only, weights sync over NCCL), so this runs every CPU-side step of an experience the way its
trainer does, with only the GPU parts replaced:
- generation: OpenRLHF's own `SingleTurnAgentExecutor.execute` (what its vLLM engine actor calls)
  with an engine that samples from a small bigram model the way vLLM does, returning the
  *processed* log-probs (after temperature and top-p, renormalised over the kept tokens), which
  OpenRLHF requests when `--algo.advantage.is_correction_level` is not "off";
- `SamplesGenerator._process_response_into_experience` turns each response into an Experience;
- `RemoteExperienceMaker.split_rollout_samples` batches them with `Experience.concat_experiences`;
- the model forwards of `make_experience` (actor, reference, critic, reward) are the bigram
  model's raw log-probs, a fixed value function and a rule reward, combined as make_experience
  combines them (`compute_approx_kl`);
- then the real, patched `compute_advantages_and_returns`.
"""

import asyncio
from types import SimpleNamespace

import pytest
import torch

import sae_openrlhf  # noqa: F401  (installs the patch, as the wrapper's worker hook does)
from openrlhf.models.utils import compute_approx_kl
from openrlhf.trainer.ppo_utils import experience_maker
from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator
from openrlhf.utils.agent import SingleTurnAgentExecutor
from sae_core import compute_advantages

Maker = experience_maker.RemoteExperienceMaker
V = 32  # vocabulary
PAD = 0
N_SAMPLES = 2  # responses per prompt


class Bigram:
    """p(next | previous) over V tokens: a peaked, fixed random table ([V, V] float64 probabilities)."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(V, V, generator=g, dtype=torch.float64) * 2.5
        self.probs = torch.softmax(logits, dim=-1)

    def raw_logprobs(self, sequences):
        """[B, L-1]: log p(sequences[:, t+1] | sequences[:, t]) under the model itself (temperature 1,
        no top-p): what OpenRLHF's actor forward recomputes as action_log_probs."""
        prev, nxt = sequences[:, :-1], sequences[:, 1:]
        return torch.log(self.probs[prev, nxt]).float()


class Engine:
    """What OpenRLHF's agent executor awaits from vLLM: `generate(prompt_ids, params)` -> an output
    with token_ids, logprobs ([{token_id: SimpleNamespace(logprob=...)}] per token, the processed
    log-prob of the sampled token after top-p), text and finish_reason."""

    def __init__(self, model, top_p, seed):
        self.model, self.top_p = model, top_p
        self.g = torch.Generator().manual_seed(seed)

    async def generate(self, prompt_ids, params, multi_modal_data=None):
        tokens, logprobs = [], []
        prev = prompt_ids[-1]
        for _ in range(params.max_tokens):
            p = self.model.probs[prev]
            order = torch.argsort(p, descending=True)
            cumulative = torch.cumsum(p[order], 0)
            keep = order[: int((cumulative < self.top_p).sum()) + 1]  # the nucleus
            q = torch.zeros_like(p)
            q[keep] = p[keep] / p[keep].sum()
            token = int(torch.multinomial(q, 1, generator=self.g))
            tokens.append(token)
            logprobs.append({token: SimpleNamespace(logprob=float(torch.log(q[token])))})
            prev = token
        out = SimpleNamespace(token_ids=tokens, logprobs=logprobs if params.logprobs is not None else None,
                              text=" ".join(map(str, tokens)), finish_reason="length")
        return SimpleNamespace(outputs=[out])


def tokenizer(text, add_special_tokens=False, return_tensors="pt"):
    return {"input_ids": torch.tensor([[int(t) for t in text.split()]])}


def rollout(model, *, top_p=0.8, correction=True, n_prompts=4, max_tokens=24, seed=0):
    """OpenRLHF's generation and experience making for n_prompts x N_SAMPLES responses; returns the
    micro-batched experiences as `make_experience` hands them on."""
    g = torch.Generator().manual_seed(seed)
    prompts = [" ".join(str(int(t)) for t in torch.randint(1, V, (int(torch.randint(3, 8, (1,), generator=g)),),
                                                           generator=g)) for _ in range(n_prompts)]
    params = SimpleNamespace(max_tokens=max_tokens, logprobs=0 if correction else None)
    executor = SingleTurnAgentExecutor()
    engine = Engine(model, top_p, seed)

    async def generate_all():
        return [await executor.execute(p, "label", params, 64, tokenizer, engine)
                for p in prompts for _ in range(N_SAMPLES)]

    responses = asyncio.run(generate_all())
    generator = SamplesGenerator.__new__(SamplesGenerator)
    samples = [generator._process_response_into_experience(r, max_len=64) for r in responses]
    maker = Maker.__new__(Maker)
    maker.args = SimpleNamespace(train=SimpleNamespace(dynamic_batch_enable=False),
                                 rollout=SimpleNamespace(micro_batch_size=3))
    maker.tokenizer = SimpleNamespace(pad_token_id=PAD)
    batches = maker.split_rollout_samples(samples)  # concat_experiences, uneven lengths padded
    reference = Bigram(seed=1)
    for b in batches:  # what make_experience attaches from the model forwards
        b.action_log_probs = model.raw_logprobs(b.sequences)
        base = reference.raw_logprobs(b.sequences)
        b.kl = compute_approx_kl(b.action_log_probs, base, kl_estimator="k1")
        b.values = torch.tanh(b.sequences[:, 1:].float() / V - 0.5)  # a fixed value function of the token
        b.rewards = (b.sequences[:, -1] % 2 == 0).float()  # a rule reward per response
    return batches


def maker(estimator="gae", lambd=0.95, sae=None):
    m = Maker.__new__(Maker)
    m.advantage_estimator = estimator
    m.kl_ctl = SimpleNamespace(value=0.01)
    advantage = SimpleNamespace(estimator=estimator, gamma=1.0, lambd=lambd, no_std_norm=False,
                                sae=SimpleNamespace(**(sae or {"estimator": None})))
    m.strategy = SimpleNamespace(args=SimpleNamespace(
        rollout=SimpleNamespace(n_samples_per_prompt=N_SAMPLES), reward=SimpleNamespace(clip_range=None),
        algo=SimpleNamespace(advantage=advantage), overlong_buffer_len=None, stop_properly_penalty_coef=None))
    return m


@pytest.fixture(scope="module")
def model():
    return Bigram()


def test_the_path_builds_what_the_adapter_reads(model):
    batches = rollout(model)
    assert len(batches) == 3  # 8 responses in micro-batches of 3, 3, 2
    for b in batches:
        A = b.action_mask.shape[1]
        assert b.sequences.shape[1] == A + 1 and b.rollout_log_probs.shape == (len(b.sequences), A)
        # prompts sit before the actions: each row's action mask starts with zeros
        assert not b.action_mask[:, 0].any() and b.action_mask.sum() > 0


def test_sae_at_threshold_1_is_openrlhfs_gae_on_action_tokens(model):
    """On the actor's log-probs (is_correction off), every action token has log-prob < 0 = log(1),
    so every one is a boundary and sae is OpenRLHF's GAE."""
    sae = {"estimator": "sae", "threshold": 1.0, "lam": 0.95}
    ours = maker(sae=sae).compute_advantages_and_returns(rollout(model, correction=False))
    theirs = maker(lambd=0.95).compute_advantages_and_returns(rollout(model, correction=False))
    for a, b in zip(ours, theirs, strict=True):
        mask = a.action_mask.bool()
        torch.testing.assert_close(a.advantages[mask], b.advantages[mask], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.returns[mask], b.returns[mask], rtol=1e-5, atol=1e-5)


def test_rollout_log_probs_are_read_when_present(model):
    """With rollout log-probs (is_correction on) the boundaries are the sampler's processed
    log-probs below log(threshold); without them, the actor's recomputed ones."""
    sae = {"estimator": "sae", "threshold": 0.2, "lam": 0.95}
    with_rollout = maker(sae=sae).compute_advantages_and_returns(rollout(model, correction=True))
    without = maker(sae=sae).compute_advantages_and_returns(rollout(model, correction=False))
    for b, exp in zip(rollout(model, correction=True), with_rollout, strict=True):
        assert exp.rollout_log_probs is not None
        shaped = exp.info["return"]  # OpenRLHF's shaped reward per response, for a sanity check
        assert shaped.shape == (len(b.sequences),)
        boundaries = (b.rollout_log_probs < torch.log(torch.tensor(0.2))) & b.action_mask.bool()
        rate = boundaries.sum(-1).float() / b.action_mask.sum(-1)
        torch.testing.assert_close(exp.info["sae_boundary_fraction"], rate)
    for b, exp in zip(rollout(model, correction=False), without, strict=True):
        assert exp.rollout_log_probs is None
        boundaries = (b.action_log_probs < torch.log(torch.tensor(0.2))) & b.action_mask.bool()
        torch.testing.assert_close(exp.info["sae_boundary_fraction"],
                                   boundaries.sum(-1).float() / b.action_mask.sum(-1))


def test_with_top_p_a_processed_log_prob_can_be_0_and_then_threshold_1_is_not_gae(model):
    """A token alone in its nucleus has processed log-prob log(1) = 0: no threshold makes it a
    boundary, so on rollout log-probs sae at threshold 1 is not GAE (the README says so)."""
    batches = rollout(model, correction=True)
    certain = sum(int(((b.rollout_log_probs == 0) & b.action_mask.bool()).sum()) for b in batches)
    assert certain > 0
    sae = {"estimator": "sae", "threshold": 1.0, "lam": 0.95}
    ours = maker(sae=sae).compute_advantages_and_returns(rollout(model, correction=True))
    theirs = maker(lambd=0.95).compute_advantages_and_returns(rollout(model, correction=True))
    assert any(not torch.allclose(a.advantages, b.advantages, atol=1e-4) for a, b in zip(ours, theirs, strict=True))


def test_top_p_lowers_the_boundary_rate_of_processed_log_probs(model):
    """Top-p renormalises over the nucleus, so a processed log-prob is never below the raw one: on
    the same tokens, boundaries from rollout log-probs are a subset of those from the actor's."""
    batches = rollout(model, top_p=0.7)
    processed = raw = 0
    for b in batches:
        valid = b.action_mask.bool()
        assert (b.rollout_log_probs[valid] >= b.action_log_probs[valid] - 1e-5).all()
        processed += int(((b.rollout_log_probs < torch.log(torch.tensor(0.2))) & valid).sum())
        raw += int(((b.action_log_probs < torch.log(torch.tensor(0.2))) & valid).sum())
    assert processed < raw


def test_the_adapter_equals_sae_core_on_the_experiences(model):
    sae = {"estimator": "sae", "threshold": 0.2, "lam": 0.9}
    got = maker(sae=sae).compute_advantages_and_returns(rollout(model))
    from openrlhf.models.utils import compute_reward

    raw = []
    for b in rollout(model):
        shaped = compute_reward(b.rewards.float(), 0.01, b.kl, action_mask=b.action_mask)
        raw.append(compute_advantages(shaped, b.values, b.action_mask, estimator="sae", threshold=0.2, lam=0.9,
                                      logprobs=b.rollout_log_probs, mask_mode="zero"))
    for exp, want in zip(got, raw, strict=True):
        torch.testing.assert_close(exp.returns, want.returns)
