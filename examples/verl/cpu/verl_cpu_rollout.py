"""`actor_rollout_ref.rollout.name=hf_cpu`: a rollout for veRL 0.9.1 built on transformers'
`generate`, for the CPU harness (examples/verl/run_cpu.sh). A harness for trying and testing, not a
training setup: one request at a time, no KV cache kept between requests, fp32.

It plugs in where vLLM does (verl_cpu_platform registers it):
- `HFReplica` (veRL's RolloutReplica registry) starts one `HFRolloutServer` Ray actor per replica;
  veRL's agent loop sends it token-in/token-out `generate` requests through its load balancer;
- `HFServerAdapter` (veRL's BaseRollout registry) lives in the trainer's actor worker: veRL's "naive"
  checkpoint engine (actor and rollout colocated, the default) hands it the actor's full weights
  after each update, which it forwards to the server.

Like vLLM with `logprobs_mode=processed_logprobs` (veRL's default), the log-prob returned for each
sampled token is the one of the distribution it was sampled from: after temperature, top-k and
top-p.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray
import torch
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, TokenOutput
from verl.workers.rollout.utils import ensure_async_iterator

ROLLOUT_NAME = "hf_cpu"


def server_name(replica_rank: int, suffix: str = "") -> str:
    """The Ray actor name of a replica's server (the adapter finds it by this name)."""
    return f"{ROLLOUT_NAME}_server_{replica_rank}{suffix}"


def sample(model, prompt_ids: list[int], *, max_tokens: int, temperature: float, top_k: int, top_p: float,
           eos_token_id: list[int], pad_token_id: int,
           repetition_penalty: float = 1.0) -> tuple[list[int], list[float]]:
    """Sample one response with `model.generate`.

    prompt_ids: the prompt's token ids (length P). temperature 0 is greedy (its log-probs are then
    those of the unprocessed distribution); top_k <= 0 and top_p >= 1 turn those filters off.
    Returns (token_ids, log_probs): the N <= max_tokens sampled ids (ending with an EOS id when the
    model stopped) and, for each, its log-probability (float) under the processed distribution it
    was drawn from, as vLLM reports them.
    """
    from transformers import GenerationConfig

    greedy = temperature <= 0
    config = GenerationConfig(
        max_new_tokens=max_tokens, min_new_tokens=0, do_sample=not greedy, num_beams=1,
        temperature=1.0 if greedy else float(temperature), top_k=0 if greedy or top_k <= 0 else int(top_k),
        top_p=1.0 if greedy else float(top_p), repetition_penalty=float(repetition_penalty),
        eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        output_scores=True, output_logits=True, return_dict_in_generate=True)
    ids = torch.tensor([prompt_ids], dtype=torch.long)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
    tokens = out.sequences[0, ids.shape[1]:]
    # scores: the logits after the processors (temperature, top-k, top-p), one [1, V] per step
    steps = out.logits if greedy else out.scores
    processed = torch.stack([s[0] for s in steps[: len(tokens)]]).float()
    log_probs = torch.log_softmax(processed, dim=-1).gather(-1, tokens[:, None])[:, 0]
    return tokens.tolist(), log_probs.tolist()


class HFRolloutServer:
    """One replica's generation server (a Ray actor): a copy of the policy in fp32 on the CPU.

    Serves `generate` (veRL's token-in/token-out server API, what vLLMHttpServer.generate serves),
    `update_weights` from the adapter, and the lifecycle calls veRL makes on rollout servers (sleep,
    wake_up, cache and abort control), which have nothing to do here.
    """

    def __init__(self, config, model_config, replica_rank: int = 0):
        from transformers import AutoModelForCausalLM, GenerationConfig

        self.config = config
        self.replica_rank = replica_rank
        path = os.path.expanduser(model_config.path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
        self.model.eval()
        generation = GenerationConfig.from_pretrained(path)
        eos = generation.eos_token_id
        self.eos_token_id = [eos] if isinstance(eos, int) else list(eos)
        self.pad_token_id = generation.pad_token_id if generation.pad_token_id is not None else self.eos_token_id[0]
        self.global_steps: int | None = None
        self._lock = asyncio.Lock()  # one request at a time: the model is not re-entrant
        torch.manual_seed(int(config.seed) + replica_rank)
        print(f"hf_cpu rollout server {server_name(replica_rank)}: {path}", flush=True)

    async def generate(self, prompt_ids: list[int], sampling_params: dict[str, Any], request_id: str,
                       image_data=None, video_data=None, **kwargs) -> TokenOutput:
        """Token in, token out: sample a response to `prompt_ids` (list of int) under
        `sampling_params` (temperature, top_k, top_p, logprobs, max_tokens, ...)."""
        if image_data or video_data:
            raise NotImplementedError("the hf_cpu rollout is text only")
        params = dict(sampling_params)
        budget = self.config.prompt_length + self.config.response_length - len(prompt_ids)
        max_tokens = params.pop("max_tokens", params.pop("max_new_tokens", None))
        max_tokens = min(self.config.response_length, budget) if max_tokens is None else max_tokens
        max_tokens = max(1, min(int(max_tokens), budget))
        async with self._lock:
            token_ids, log_probs = await asyncio.to_thread(
                sample, self.model, list(prompt_ids), max_tokens=max_tokens,
                temperature=params.get("temperature", 1.0), top_k=params.get("top_k", -1),
                top_p=params.get("top_p", 1.0), repetition_penalty=params.get("repetition_penalty", 1.0),
                eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id)
        return TokenOutput(token_ids=token_ids, log_probs=log_probs if params.get("logprobs") else None,
                           stop_reason="completed", extra_fields={"global_steps": self.global_steps})

    async def update_weights(self, state: dict[str, torch.Tensor], global_steps: int | None = None) -> None:
        """Load the actor's weights: `state` maps Hugging Face parameter names to full tensors."""
        own = self.model.state_dict()
        unknown = sorted(set(state) - set(own))
        missing = sorted(name for name, _ in self.model.named_parameters() if name not in state)
        if unknown or missing:
            raise KeyError(f"the actor's weights do not match the rollout model's: not in the model "
                           f"{unknown[:5]}, not sent {missing[:5]}")
        with torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor)
        if global_steps is not None:
            self.global_steps = global_steps

    async def set_global_steps(self, global_steps: int) -> None:
        self.global_steps = global_steps

    async def get_server_address(self) -> tuple[str, int]:
        return server_name(self.replica_rank), 0

    # lifecycle calls of veRL's RolloutReplica / CheckpointEngineManager: nothing to free or abort
    async def wake_up(self, tags: list[str] | None = None) -> None: ...
    async def sleep(self) -> None: ...
    async def clear_kv_cache(self) -> None: ...
    async def release_kv_cache(self) -> None: ...
    async def resume_kv_cache(self) -> None: ...
    async def wait_for_requests_to_drain(self) -> None: ...
    async def resume_generation(self) -> None: ...
    async def start_profile(self, **kwargs) -> None: ...
    async def stop_profile(self) -> None: ...

    async def abort_all_requests(self, reset_prefix_cache: bool = True, reject_request: bool = False) -> dict:
        return {"aborted_count": 0, "request_ids": []}

    async def abort_request(self, request_id: str, reset_prefix_cache: bool = True) -> dict:
        return {"aborted": False, "request_id": request_id}


class HFReplica(RolloutReplica):
    """veRL's rollout replica for hf_cpu: one HFRolloutServer actor, next to the trainer's workers."""

    async def launch_servers(self) -> None:
        name = server_name(self.replica_rank, self.name_suffix)
        server = ray.remote(HFRolloutServer).options(
            name=name, num_cpus=0, max_concurrency=self.max_concurrency,
        ).remote(config=self.config, model_config=self.model_config, replica_rank=self.replica_rank)
        self.servers = [server]
        self._server_handle = server
        self._server_address = name  # the load balancer's key; nothing listens on HTTP


class HFServerAdapter(BaseRollout):
    """The rollout as the trainer's actor worker sees it: receives the actor's weights from veRL's
    checkpoint engine and forwards them to this worker's replica server."""

    def __init__(self, config, model_config, device_mesh=None, replica_rank: int = -1, **kwargs):
        super().__init__(config, model_config, device_mesh)
        world = (self.config.tensor_model_parallel_size * self.config.data_parallel_size
                 * self.config.pipeline_model_parallel_size)
        rank = int(os.environ.get("RANK", "0"))
        self.replica_rank = rank // world if replica_rank == -1 else replica_rank
        self.is_leader_rank = rank % world == 0
        self._server = None

    def _server_handle(self):
        if self._server is None:
            self._server = ray.get_actor(server_name(self.replica_rank))
        return self._server

    async def update_weights(self, weights, wire_format: str = "named_tensors", global_steps: int | None = None,
                             **kwargs) -> None:
        """weights: (name, tensor) pairs, full (unsharded) tensors with Hugging Face names. Every rank
        consumes them (gathering a shard may be collective); the replica's leader sends them on."""
        if wire_format != "named_tensors":
            raise NotImplementedError(f"the hf_cpu rollout takes full named tensors, not {wire_format!r}")
        state = {}
        async for name, tensor in ensure_async_iterator(weights):
            state[name] = tensor.detach().to("cpu", copy=True)
        if self.is_leader_rank:
            await self._server_handle().update_weights.remote(state, global_steps)

    async def resume(self, tags: list[str]) -> None:
        pass  # the server's model stays in memory

    async def release(self) -> None:
        pass
