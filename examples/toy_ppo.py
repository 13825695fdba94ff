"""PPO on a toy verifiable task with a small transformer, the advantage estimator chosen by a flag.

    .venv/bin/python examples/toy_ppo.py                       # gae, the defaults
    .venv/bin/python examples/toy_ppo.py --estimator sae --threshold 0.2
    .venv/bin/python examples/toy_ppo.py --help                # every hyperparameter of `Config`

One file, read top to bottom (CleanRL style): the task and its character tokenizer, the models, a
sampling loop, a short supervised warm start, then PPO. Every hyperparameter sits in `Config` and
on the command line.

The task. A prompt "3+5+7+2+9+4=" (n_terms single digits, so every prompt has the same length and
needs no padding); the response writes the running sums as a chain and then the answer:

    3+5=8,8+7=15,15+2=17,17+9=26,26+4=30;30<eos>

The reward is 1 when the response ends with <eos> and its last number is the sum, else 0, placed
on the last valid token. Most tokens are routine (copying an operand or the previous sum, "+",
"=", ","); the few that decide the answer are the digits of each sum. Responses are about 41
tokens long at n_terms=6 and 121 at 16; `scratchpad` copies first write the operand digits and a
"," that many times (50 at n_terms=6: about 390 tokens, 350 of them routine, the same decisions).
`VARIANTS` names the three settings the study (examples/toy_ppo_study.py) compares.

The models. The policy is a GPT-2 causal LM built by transformers from a config (random init, no
download). The critic is a second model of the same shape, GPT2ForTokenClassification with one
output (a scalar head on every position), whose trunk starts as a copy of the warm-started
policy's (as veRL and OpenRLHF initialise the critic from the actor's checkpoint). Before RL the
critic is warmed up: `value_warmup` rollout batches of the fixed warm-started policy, regressing
on their Monte Carlo returns, so that every estimator starts from the same fitted critic
(`warm_models`, cached per seed and setting under --cache).

Time indices. A sequence is the prompt p_0..p_{P-1} followed by the response y_0..y_{T-1}
(right-padded after <eos>). logprobs[t] = log pi(y_t | p, y_<t) comes from the logits at position
P-1+t; values[t] = V(p, y_<t), the critic's value of the prefix *before* token t (sae_core's
convention), comes from the critic's output at the same position P-1+t. All per-token tensors
are [B, T] with response_mask[b, t] = 1 for the tokens the policy generated, <eos> included.

PPO. Each step samples one response (temperature 1) to each of `batch` fresh prompts, records the
behaviour log-probs, scores the responses, computes values, and calls
`sae_core.compute_advantages(rewards, values, response_mask, estimator=..., logprobs=...,
critic_lam=1.0)` on the [B, T] tensors a framework would pass: the critic's targets are the
Monte Carlo returns whatever the estimator, so estimators differ only in the policy's advantages.
Advantages are whitened with `masked_whiten` (veRL's), the policy takes `ppo_epochs` passes of
clipped-surrogate minibatch updates (token-mean loss), and the critic regresses on the returns
(0.5 * squared error, token-mean; no value clipping). No KL penalty or entropy bonus.

Logged per step (printed, and one JSON line in `log.jsonl`): the rollout batch's pass rate, the
policy and critic losses, the boundary fraction and mean segment length of the estimator's
boundaries (`segment_stats`; estimators without segments report 0 and the response length), the
mean response length, where boundaries fall relative to each response's first departure from
the correct solution (`departure_stats`), every `eval_every` steps the pass rate on
`eval_prompts` held-out prompts after the step's update (step 0: the warm-started policy), and
on the last step `eval_auc`, the area under that curve over the steps (`pass_rate_auc`).

Outputs, under --out: `config.json`, `log.jsonl`, and every `save_every` steps the step's rollouts
in the trajectory standard, `rollouts/step-XXXXXXXX.parquet`, with the estimator's raw advantages
(before whitening), returns and boundaries, for `sae recompute`, `sae inspect` and `sae report`.

A run is fixed by its seed and thread count, up to last-bit differences between CPU kernels.
Timings, results, how the defaults were chosen and larger settings for a GPU: docs/toy_ppo.md.
"""


import argparse
import hashlib
import io
import json
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config, GPT2ForTokenClassification, GPT2LMHeadModel

from sae_core import (ESTIMATORS, compute_advantages, estimator_params, masked_whiten, registry, segment_counts,
                      segment_stats)
from sae_core import trajectory as tj
from sae_core.atomic import write_bytes_atomic


def arg(default, help: str, **extra):
    """A Config field with its command-line help (and e.g. choices=...)."""
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Config:
    # run
    seed: int = arg(0, "seeds the data, the initial weights and the sampling")
    out: str = arg("toy-ppo", "output directory: log.jsonl and rollouts/")
    device: str = arg("cpu", "torch device")
    threads: int = arg(2, "torch CPU threads")
    # task
    n_terms: int = arg(6, "single-digit operands per prompt; a response is about 8 tokens per operand")
    scratchpad: int = arg(0, "copies of the operand digits (each then ',') the response writes before its chain")
    # models (policy and critic have the same shape)
    n_layers: int = arg(2, "transformer layers")
    d_model: int = arg(64, "hidden size")
    n_heads: int = arg(4, "attention heads")
    # supervised warm start
    sft_steps: int = arg(300, "teacher-forced steps on worked solutions before PPO")
    sft_batch: int = arg(64, "solutions per warm-start step")
    sft_lr: float = arg(3e-3, "warm-start learning rate")
    # value warm-up (the critic, before RL, on the warm-started policy's Monte Carlo returns)
    value_warmup: int = arg(20, "rollout batches of critic-only regression before PPO (0: none)")
    value_warmup_lr: float = arg(1e-3, "value warm-up learning rate (Adam), the same whatever critic_lr")
    cache: str = arg("", "directory caching the warm-started policy and critic per seed and setting")
    # PPO
    steps: int = arg(150, "PPO steps (one rollout batch each)")
    batch: int = arg(128, "prompts per rollout batch, one response each")
    minibatch: int = arg(64, "responses per gradient step")
    ppo_epochs: int = arg(2, "passes over each rollout batch")
    lr: float = arg(3e-4, "policy learning rate (Adam)")
    critic_lr: float = arg(1e-3, "critic learning rate (Adam)")
    clip: float = arg(0.2, "PPO ratio clip epsilon")
    max_grad_norm: float = arg(1.0, "gradient-norm clip for both models")
    # advantage estimator (sae_core.compute_advantages); each estimator reads the fields named by its
    # options (registry.ESTIMATORS[name].options)
    estimator: str = arg("gae", "advantage estimator", choices=ESTIMATORS)
    gamma: float = arg(registry.COMMON["gamma"].default, "discount (RLVR: none)")
    lam: float = arg(registry.PAPER_LAM, "GAE lambda; for sae, the lambda at segment boundaries")
    threshold: float = arg(registry.PAPER_THRESHOLD, "sae: tokens of probability below this start segments")
    alpha: float = arg(registry.VAPO_ALPHA, "vapo: lambda = 1 - 1 / (alpha * response length)")
    segment_length: int = arg(0, "sae: > 0 starts a segment every M-th valid token instead (rule fixed)")
    random_boundaries: float = arg(0.0, "sae: > 0 draws boundaries at random at this rate per valid token "
                                   "instead (rule given)")
    critic_lam: float = arg(1.0, "lambda of the critic's targets, the same for every estimator; < 0: the "
                            "estimator's own returns")
    # logging
    eval_every: int = arg(10, "steps between evaluations on the held-out prompts (and after the last)")
    eval_prompts: int = arg(256, "held-out prompts, one sampled response each (temperature 1)")
    save_every: int = arg(25, "steps between rollout files; 0 = none")
    window: int = arg(2, "a boundary is 'at' a response's first departure when within this many tokens")


# The settings the study compares: responses of about 41, 121 and 390 tokens (the last a routine
# scratchpad of 350 copied digits before the 41-token chain); the decisions are the same sums.
VARIANTS = {"short": {"n_terms": 6, "scratchpad": 0}, "long": {"n_terms": 16, "scratchpad": 0},
            "scratchpad": {"n_terms": 6, "scratchpad": 50}}


# ----------------------------------------------------------------------------------------------
# task and tokenizer

PAD, BOS, EOS = 0, 1, 2
CHARS = "0123456789+=,;"
VOCAB = ["<pad>", "<bos>", "<eos>", *CHARS]
CHAR_ID = {c: i + 3 for i, c in enumerate(CHARS)}


def encode(text: str) -> list[int]:
    return [CHAR_ID[c] for c in text]


def decode(ids) -> str:
    """The characters of `ids` up to the first <eos> (special tokens dropped)."""
    out = []
    for i in ids:
        if i == EOS:
            break
        if i >= 3:
            out.append(CHARS[i - 3])
    return "".join(out)


def make_problems(rng: np.random.Generator, n: int, n_terms: int, scratchpad: int = 0):
    """n problems with operands in 1..9: prompts [n, P] token ids (P = prompt_len(n_terms)), the
    answers [n] and the worked solutions (strings, without <eos>). With a scratchpad the solution
    first writes the operand digits and a ',' `scratchpad` times (routine tokens, no decision)."""
    operands = rng.integers(1, 10, size=(n, n_terms))
    prompts, solutions = [], []
    for row in operands:
        prompts.append([BOS, *encode("+".join(map(str, row)) + "=")])
        total, steps = int(row[0]), []
        for x in row[1:]:
            steps.append(f"{total}+{x}={total + x}")
            total += int(x)
        pad = ("".join(map(str, row)) + ",") * scratchpad
        solutions.append(pad + ",".join(steps) + f";{total}")
    return torch.tensor(prompts), operands.sum(axis=1), solutions


def prompt_len(n_terms: int) -> int:
    """<bos>, n_terms digits, n_terms - 1 "+" and the "="."""
    return 2 * n_terms + 1


def max_response_len(n_terms: int, scratchpad: int = 0) -> int:
    """Room for the longest worked solution and then some: the scratchpad's n_terms + 1 tokens per
    copy, a step "sss+d=ttt," takes at most 10 tokens while sums stay below 1000, the end
    ";sss<eos>" 5."""
    return scratchpad * (n_terms + 1) + 11 * (n_terms - 1) + 6


def score(response_ids: torch.Tensor, finished: torch.Tensor, answers: np.ndarray) -> torch.Tensor:
    """[B] float reward: 1 where the response stopped with <eos> and its last number is the answer."""
    out = torch.zeros(len(answers))
    for i, ids in enumerate(response_ids.tolist()):
        numbers = re.findall(r"\d+", decode(ids))
        out[i] = float(bool(finished[i]) and bool(numbers) and int(numbers[-1]) == answers[i])
    return out


def first_departures(responses: torch.Tensor, mask: torch.Tensor, references: list[list[int]]) -> torch.Tensor:
    """[B] int64: the first response token that differs from the correct solution, -1 where the
    response is the solution. Before its first difference a response's prefix is the solution's,
    so the token the correct chain would emit there is the reference's token at the same index.

    Args:
        responses: [B, T] token ids; mask: [B, T] 1 on generated tokens (<eos> included).
        references: B correct responses as token ids, <eos> included.
    A response that stops early or runs on departs where it first differs, or at the end of the
    shorter of the two.
    """
    if len(references) != responses.shape[0]:
        raise ValueError(f"references must hold one solution per response ({responses.shape[0]}); "
                         f"got {len(references)}")
    out = torch.full((responses.shape[0],), -1, dtype=torch.int64)
    for i, (ids, n) in enumerate(zip(responses.tolist(), mask.sum(1).long().tolist())):
        ref = references[i]
        k = next((t for t in range(min(n, len(ref))) if ids[t] != ref[t]), min(n, len(ref)))
        if k < max(n, len(ref)):
            out[i] = k
    return out


def departure_stats(boundaries: torch.Tensor, mask: torch.Tensor, departures: torch.Tensor, window: int) -> dict:
    """Where boundaries fall relative to each response's first departure d (see first_departures).

    Args:
        boundaries: [B, T] bool, True where token t starts a segment; mask: [B, T] 0/1.
        departures: [B] int64, -1 for responses without a departure.
    Returns (None where the count below a share is 0):
        departed: share of responses with a departure;
        boundary_near_departure: share of the departed with a boundary at t, |t - d| <= window;
        departure_to_boundary: mean |t - d| to the nearest boundary, over departed with any boundary;
        boundaries_before_departure: share of the departed responses' boundaries that lie before d.
    """
    b = boundaries.bool().cpu() & mask.bool().cpu()
    rows = (departures >= 0).nonzero().flatten().tolist()
    near, dist, before, total = 0, [], 0, 0
    for i in rows:
        pos = b[i].nonzero().flatten()
        d = int(departures[i])
        if len(pos):
            gap = (pos - d).abs()
            dist.append(float(gap.min()))
            near += int(gap.min() <= window)
            before += int((pos < d).sum())
            total += len(pos)
    B = len(departures)
    return {"departed": len(rows) / B if B else None,
            "boundary_near_departure": near / len(rows) if rows else None,
            "departure_to_boundary": float(np.mean(dist)) if dist else None,
            "boundaries_before_departure": before / total if total else None}


def pass_rate_auc(history: list[dict]) -> float:
    """Area under the held-out pass-rate curve (trapezoids over the evaluated steps) divided by
    the steps it spans: the mean pass rate over training, higher for an estimator that learns
    earlier. NaN with fewer than two evaluations."""
    rows = [r for r in history if "eval_pass_rate" in r]
    if len(rows) < 2:
        return float("nan")
    x = np.array([r["step"] for r in rows], float)
    y = np.array([r["eval_pass_rate"] for r in rows])
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


# ----------------------------------------------------------------------------------------------
# models


def make_models(cfg: Config) -> tuple[GPT2LMHeadModel, GPT2ForTokenClassification]:
    """A random policy and a critic of the same shape. No dropout: PPO's ratio must compare the same
    function at sampling and at update time."""
    config = GPT2Config(vocab_size=len(VOCAB),
                        n_positions=prompt_len(cfg.n_terms) + max_response_len(cfg.n_terms, cfg.scratchpad),
                        n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, resid_pdrop=0.0,
                        embd_pdrop=0.0, attn_pdrop=0.0, classifier_dropout=0.0, num_labels=1,
                        bos_token_id=BOS, eos_token_id=EOS)
    return GPT2LMHeadModel(config).to(cfg.device), GPT2ForTokenClassification(config).to(cfg.device)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of x over the entries where mask is 1 (token-mean)."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def token_logprobs(policy, seq: torch.Tensor, P: int) -> torch.Tensor:
    """[B, T] log pi(y_t | prefix) of the response tokens of seq = [prompt (P) | response (T)]: the
    logits at position P-1+t predict y_t."""
    logits = policy(input_ids=seq).logits[:, P - 1:-1].float()
    return torch.log_softmax(logits, dim=-1).gather(-1, seq[:, P:, None]).squeeze(-1)


def critic_values(critic, seq: torch.Tensor, P: int) -> torch.Tensor:
    """[B, T] values[t] = V(prompt, y_<t): the critic's output at position P-1+t, the last position
    of the prefix before y_t."""
    return critic(input_ids=seq).logits[:, P - 1:-1, 0].float()


@torch.no_grad()
def sample(policy, prompts: torch.Tensor, max_len: int, gen: torch.Generator):
    """One response per prompt at temperature 1, with the KV cache.

    Args:
        prompts: [B, P] token ids (same length, no padding).
    Returns:
        responses [B, T] token ids, right-padded with <pad> after <eos> (T <= max_len);
        logprobs [B, T] float, the behaviour log-prob of each sampled token (0 in the padding);
        mask [B, T] float, 1 for generated tokens (<eos> included);
        finished [B] bool, True where the response ended with <eos> (else it hit max_len).
    """
    B = prompts.shape[0]
    out = policy(input_ids=prompts, use_cache=True)
    done = torch.zeros(B, dtype=torch.bool, device=prompts.device)
    tokens, logps, masks = [], [], []
    for _ in range(max_len):
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        tok = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(-1)
        valid = ~done
        tokens.append(torch.where(valid, tok, PAD))
        logps.append(torch.where(valid, logp.gather(-1, tok[:, None]).squeeze(-1), 0.0))
        masks.append(valid.float())
        done = done | (tok == EOS)
        if done.all():
            break
        out = policy(input_ids=tokens[-1][:, None], past_key_values=out.past_key_values, use_cache=True)
    return torch.stack(tokens, 1), torch.stack(logps, 1), torch.stack(masks, 1), done


def evaluate(policy, prompts: torch.Tensor, answers: np.ndarray, max_len: int, seed: int) -> float:
    """Pass rate of one sampled response per held-out prompt. The sampler is seeded the same way at
    every evaluation, so runs compared at the same step see the same random numbers."""
    gen = torch.Generator(device=prompts.device).manual_seed(seed)
    responses, _, _, finished = sample(policy, prompts, max_len, gen)
    return score(responses, finished, answers).mean().item()


# ----------------------------------------------------------------------------------------------
# supervised warm start, and the value warm-up


def warm_start(cfg: Config) -> dict:
    """A policy trained for cfg.sft_steps on worked solutions (token-mean cross-entropy on the
    response tokens), so that PPO starts from a model that solves some prompts. Returns its
    state dict."""
    torch.manual_seed(cfg.seed)  # initial weights
    policy, _ = make_models(cfg)
    rng = np.random.default_rng([cfg.seed, 2])
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.sft_lr)
    P = prompt_len(cfg.n_terms)
    for step in range(cfg.sft_steps):
        prompts, _, solutions = make_problems(rng, cfg.sft_batch, cfg.n_terms, cfg.scratchpad)
        responses = [encode(s) + [EOS] for s in solutions]
        T = max(map(len, responses))
        resp = torch.tensor([r + [PAD] * (T - len(r)) for r in responses])
        mask = torch.tensor([[1.0] * len(r) + [0.0] * (T - len(r)) for r in responses])
        seq = torch.cat([prompts, resp], 1).to(cfg.device)
        loss = -masked_mean(token_logprobs(policy, seq, P), mask.to(cfg.device))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == cfg.sft_steps - 1:
            print(f"sft {step:4d}  loss {loss.item():.3f}")
    return policy.state_dict()


def rollout(cfg: Config, policy, rng: np.random.Generator, gen: torch.Generator) -> dict:
    """One rollout batch: cfg.batch fresh prompts [B, P], one sampled response each ([B, T]
    responses, behaviour logprobs and mask, see `sample`), the [B] outcome `reward` and its
    token-level form `rewards` [B, T] (on each row's last valid token), seq = [prompt | response],
    and `references`, the correct responses as token ids with <eos>."""
    prompts, answers, solutions = make_problems(rng, cfg.batch, cfg.n_terms, cfg.scratchpad)
    prompts = prompts.to(cfg.device)
    responses, logprobs, mask, finished = sample(policy, prompts, max_response_len(cfg.n_terms, cfg.scratchpad),
                                                 gen)
    reward = score(responses, finished, answers)
    lengths = mask.sum(1).long()
    rewards = torch.zeros_like(mask)
    rewards[torch.arange(cfg.batch), lengths - 1] = reward.to(rewards.device)
    return dict(prompts=prompts, responses=responses, logprobs=logprobs, mask=mask, finished=finished,
                reward=reward, rewards=rewards, lengths=lengths, seq=torch.cat([prompts, responses], 1),
                references=[encode(s) + [EOS] for s in solutions])


def value_warmup(cfg: Config, policy, critic) -> dict:
    """cfg.value_warmup rollout batches of the fixed warm-started policy, on each ppo_epochs passes
    of critic regression on the Monte Carlo returns (critic_lam = 1 targets, which PPO keeps), so
    that every estimator starts RL from the same fitted critic. Returns what the rollouts show of
    the policy's low-probability tokens under sae's threshold rule: boundary_fraction and
    mean_segment_length (segment_stats), and the pass rate; None without warm-up."""
    rng = np.random.default_rng([cfg.seed, 3])
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 3)
    opt = torch.optim.Adam(critic.parameters(), lr=cfg.value_warmup_lr)
    P = prompt_len(cfg.n_terms)
    counts, passes = np.zeros(3), []  # valid tokens, boundaries, segments (per response, summed)
    for step in range(cfg.value_warmup):
        r = rollout(cfg, policy, rng, gen)
        out = compute_advantages(r["rewards"], torch.zeros_like(r["mask"]), r["mask"], estimator="sae",
                                 logprobs=r["logprobs"], threshold=cfg.threshold, gamma=cfg.gamma, critic_lam=1.0)
        losses = []
        for _ in range(cfg.ppo_epochs):
            for mb in torch.randperm(cfg.batch, generator=gen, device=cfg.device).split(cfg.minibatch):
                losses.append(critic_update(critic, opt, r["seq"][mb], P, out.returns[mb], r["mask"][mb],
                                            cfg.max_grad_norm))
        counts += [int(c.sum()) for c in segment_counts(out.boundaries, r["mask"])]
        passes.append(r["reward"].mean().item())
        print(f"value warm-up {step:3d}  critic {np.mean(losses):.4f}  pass {passes[-1]:.3f}")
    if not cfg.value_warmup:
        return {"boundary_fraction": None, "mean_segment_length": None, "pass_rate": None}
    return {"boundary_fraction": float(counts[1] / counts[0]), "mean_segment_length": float(counts[0] / counts[2]),
            "pass_rate": float(np.mean(passes))}


WARM_FIELDS = ("seed", "n_terms", "scratchpad", "n_layers", "d_model", "n_heads", "sft_steps", "sft_batch",
               "sft_lr", "value_warmup", "value_warmup_lr", "batch", "minibatch", "ppo_epochs", "threshold",
               "gamma", "max_grad_norm")


def warm_models(cfg: Config) -> tuple[dict, dict, dict]:
    """(policy state, critic state, value_warmup's statistics) before RL: the supervised warm start,
    then the critic (trunk copied from the policy) warmed up on its returns. With cfg.cache, read
    from and written to one file per setting of the fields that shape them (WARM_FIELDS), so that
    runs of one seed that differ in the estimator or the critic's learning rate share both models."""
    key = json.dumps({k: getattr(cfg, k) for k in WARM_FIELDS}, sort_keys=True)
    path = Path(cfg.cache) / f"warm-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt" if cfg.cache else None
    if path is not None and path.exists():
        saved = torch.load(path, map_location=cfg.device)
        return saved["policy"], saved["critic"], saved["info"]
    policy_state = warm_start(cfg)
    torch.manual_seed(cfg.seed)  # the critic's head (trunk and policy are loaded)
    policy, critic = make_models(cfg)
    policy.load_state_dict(policy_state)
    critic.transformer.load_state_dict(policy.transformer.state_dict())
    info = value_warmup(cfg, policy, critic)
    critic_state = critic.state_dict()
    if path is not None:
        buffer = io.BytesIO()
        torch.save({"policy": policy_state, "critic": critic_state, "info": info, "key": key}, buffer)
        write_bytes_atomic(path, buffer.getvalue(), overwrite=True)
    return policy_state, critic_state, info


# ----------------------------------------------------------------------------------------------
# PPO


def estimator_kwargs(cfg: Config) -> dict:
    """The scalar arguments of `compute_advantages` for cfg.estimator: gamma, critic_lam, and of the
    options that estimator takes (registry.ESTIMATORS[name].options; it rejects any other), those
    that are fields of Config. For sae the boundary rule is threshold's unless segment_length > 0
    (fixed) or random_boundaries > 0 (given: `train` draws them)."""
    takes = registry.ESTIMATORS[cfg.estimator].options
    options = {f.name: getattr(cfg, f.name) for f in fields(cfg) if f.name in takes}
    if "segment_length" in options:
        if cfg.random_boundaries > 0:
            options = {**options, "threshold": None, "segment_length": None, "boundary": "given"}
        elif cfg.segment_length > 0:
            options["threshold"] = None
        else:
            options["segment_length"] = None
    options = {k: v for k, v in options.items() if v is not None}
    critic_lam = cfg.critic_lam if cfg.critic_lam >= 0 else None
    return dict(estimator=cfg.estimator, gamma=cfg.gamma, critic_lam=critic_lam, **options)


def critic_update(critic, opt, seq, P, returns, mask, max_grad_norm) -> float:
    """One gradient step of 0.5 * (V_t - R_t)^2 averaged over valid tokens; returns the loss."""
    loss = 0.5 * masked_mean((critic_values(critic, seq, P) - returns) ** 2, mask)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(critic.parameters(), max_grad_norm)
    opt.step()
    return loss.item()


def policy_update(policy, opt, seq, P, old_logprobs, advantages, mask, clip, max_grad_norm) -> float:
    """One gradient step of PPO's clipped surrogate, token-mean over valid tokens; returns the loss."""
    ratio = torch.exp(token_logprobs(policy, seq, P) - old_logprobs)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    loss = -masked_mean(surrogate, mask)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    opt.step()
    return loss.item()


def save_rollouts(path: Path, cfg: Config, step: int, prompts, responses, logprobs, values, rewards, mask,
                  out, reward, finished) -> None:
    """The step's [B, T] tensors as one file of the trajectory standard, with the estimator's
    outputs (advantages before whitening) and its parameters in the metadata."""
    B = responses.shape[0]
    ids = [f"seed{cfg.seed}-step{step}-{i}" for i in range(B)]
    table = tj.from_padded(
        {"response_ids": responses.int(), "logprobs": logprobs, "values": values, "rewards": rewards,
         "advantages": out.advantages, "returns": out.returns, "boundaries": out.boundaries},
        mask,
        {"trajectory_id": ids, "group_id": ids, "step": np.full(B, step), "prompt_ids": prompts.tolist(),
         "reward": reward.numpy(), "finish_reason": ["stop" if f else "length" for f in finished.tolist()]},
        estimators={"advantages": estimator_params(**estimator_kwargs(cfg))},
    )
    tj.write_table(table, path, overwrite=True)


def train(cfg: Config, policy_state: dict, critic_state: dict | None = None) -> list[dict]:
    """PPO from the warm-started policy weights; returns the per-step log (also in out/log.jsonl).

    critic_state: the warmed-up critic (`warm_models`); None starts the critic from the policy's
    trunk and a fresh head. The prompts, the sampler and the minibatch order are seeded by cfg.seed
    alone, so runs that differ only in the estimator start from the same weights and see the same
    prompts in the same order (and the same first rollout batch).
    """
    torch.manual_seed(cfg.seed)  # the critic's head; everything else is loaded
    policy, critic = make_models(cfg)
    policy.load_state_dict(policy_state)
    if critic_state is None:
        critic.transformer.load_state_dict(policy.transformer.state_dict())
    else:
        critic.load_state_dict(critic_state)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    critic_opt = torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr)
    rng = np.random.default_rng([cfg.seed, 0])  # training prompts
    gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed)  # sampling and minibatch order
    # random boundaries from their own stream, so that drawing them leaves the sampler's alone
    boundary_gen = torch.Generator(device=cfg.device).manual_seed(cfg.seed + 4)
    eval_prompts, eval_answers, _ = make_problems(np.random.default_rng([cfg.seed, 1]), cfg.eval_prompts,
                                                  cfg.n_terms, cfg.scratchpad)
    eval_prompts = eval_prompts.to(cfg.device)
    max_len = max_response_len(cfg.n_terms, cfg.scratchpad)
    P = prompt_len(cfg.n_terms)
    out_dir = Path(cfg.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log_path = out_dir / "log.jsonl"
    log_path.write_text("")
    history = []
    start = time.perf_counter()

    def log(row: dict) -> None:
        history.append(row)
        with open(log_path, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    # step 0: the warm-started policy
    log({"step": 0, "samples": 0, "eval_pass_rate": evaluate(policy, eval_prompts, eval_answers, max_len,
                                                            seed=cfg.seed + 1)})
    print(f"step    0  eval {history[0]['eval_pass_rate']:.3f}  (warm start)")

    for step in range(1, cfg.steps + 1):
        # 1. rollouts: [B, P] prompts -> [B, T] responses with behaviour log-probs, values
        r = rollout(cfg, policy, rng, gen)
        seq, mask, logprobs = r["seq"], r["mask"], r["logprobs"]
        with torch.no_grad():
            values = critic_values(critic, seq, P)

        # 2. advantages (and the critic's targets) from the token-level rewards
        given = {}
        if cfg.estimator == "sae" and cfg.random_boundaries > 0:
            given["given_boundaries"] = (torch.rand(mask.shape, generator=boundary_gen, device=cfg.device)
                                         < cfg.random_boundaries) & mask.bool()
        out = compute_advantages(r["rewards"], values, mask, logprobs=logprobs, **given, **estimator_kwargs(cfg))
        advantages = masked_whiten(out.advantages, mask)

        # 3. PPO epochs over minibatches: clipped policy loss, critic regression on the returns
        pg_losses, vf_losses = [], []
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(cfg.batch, generator=gen, device=cfg.device)
            for mb in order.split(cfg.minibatch):
                pg_losses.append(policy_update(policy, opt, seq[mb], P, logprobs[mb], advantages[mb],
                                               mask[mb], cfg.clip, cfg.max_grad_norm))
                vf_losses.append(critic_update(critic, critic_opt, seq[mb], P, out.returns[mb], mask[mb],
                                               cfg.max_grad_norm))

        # 4. log (the rollout batch's statistics; the held-out pass rate after this step's update), save
        boundary_fraction, segment_length = segment_stats(out.boundaries, mask)
        departures = first_departures(r["responses"], mask, r["references"])
        row = {"step": step, "samples": step * cfg.batch, "pass_rate": r["reward"].mean().item(),
               "policy_loss": float(np.mean(pg_losses)), "critic_loss": float(np.mean(vf_losses)),
               "boundary_fraction": boundary_fraction, "mean_segment_length": segment_length,
               "response_length": r["lengths"].float().mean().item(),
               **departure_stats(out.boundaries, mask, departures, cfg.window)}
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row["eval_pass_rate"] = evaluate(policy, eval_prompts, eval_answers, max_len, seed=cfg.seed + 1)
        if step == cfg.steps:
            row["eval_auc"] = pass_rate_auc([*history, row])
        row["seconds"] = time.perf_counter() - start
        log(row)
        evaluated = f"  eval {row['eval_pass_rate']:.3f}" if "eval_pass_rate" in row else ""
        near = row["boundary_near_departure"]
        print(f"step {step:4d}  pass {row['pass_rate']:.3f}{evaluated}  pg {row['policy_loss']:+.4f}  "
              f"critic {row['critic_loss']:.4f}  boundaries {boundary_fraction:.3f}  "
              f"segment {segment_length:.1f}  near departure {'-' if near is None else f'{near:.2f}'}  "
              f"len {row['response_length']:.1f}  {row['seconds']:.0f}s")
        if cfg.save_every and step % cfg.save_every == 0:
            save_rollouts(out_dir / "rollouts" / f"step-{step:08d}.parquet", cfg, step, r["prompts"],
                          r["responses"], logprobs, values, r["rewards"], mask, out, r["reward"], r["finished"])
    return history


# ----------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser, cls, skip=()) -> None:
    """One --flag per field of the dataclass `cls` (but those named in `skip`), typed and
    documented by the field."""
    for f in fields(cls):
        if f.name in skip:
            continue
        kind = type(f.default)
        extra = {k: v for k, v in f.metadata.items() if k != "help"}
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=f.default,
                            help=f.metadata["help"] + (" (default: %(default)s)" if f.default != "" else ""),
                            **extra)


def parse_config(argv=None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_arguments(parser, Config)
    return Config(**vars(parser.parse_args(argv)))


def main(argv=None) -> list[dict]:
    cfg = parse_config(argv)
    torch.set_num_threads(cfg.threads)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    policy_state, critic_state, _ = warm_models(cfg)
    return train(cfg, policy_state, critic_state)


if __name__ == "__main__":
    main()
