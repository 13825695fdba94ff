# Shared by run_gae.sh and run_sae.sh: OpenRLHF's PPO example (Llama-3-8B SFT policy, a reward
# model, one node of 8 GPUs, colocated hybrid engine), so that the two runs differ only in the
# advantage estimator. Needs: OpenRLHF 0.11.2 with its GPU stack (vLLM, flash-attn, DeepSpeed),
# sae-rl installed, the models and the prompt dataset from the Hugging Face hub.
ACTOR=${ACTOR:-OpenRLHF/Llama-3-8b-sft-mixture}
REWARD=${REWARD:-OpenRLHF/Llama-3-8b-rm-700k}
PROMPTS=${PROMPTS:-OpenRLHF/prompt-collection-v0.1}

COMMON=(
    --ref.num_nodes 1 --ref.num_gpus_per_node 8
    --reward.num_nodes 1 --reward.num_gpus_per_node 8
    --critic.num_nodes 1 --critic.num_gpus_per_node 8
    --actor.num_nodes 1 --actor.num_gpus_per_node 8
    --vllm.num_engines 4 --vllm.tensor_parallel_size 2 --vllm.gpu_memory_utilization 0.5
    --train.colocate_all --vllm.enable_sleep --ds.enable_sleep
    --actor.model_name_or_path "$ACTOR"
    --reward.model_name_or_path "$REWARD"
    --train.micro_batch_size 8 --train.batch_size 128
    --rollout.micro_batch_size 16 --rollout.batch_size 1024
    --rollout.max_new_tokens 1024 --data.max_len 2048 --data.max_samples 100000
    --train.max_epochs 1 --ds.zero_stage 3 --ds.param_dtype bf16
    --actor.adam.lr 5e-7 --critic.adam.lr 9e-6 --algo.kl.init_coef 0.01
    --data.prompt_dataset "$PROMPTS" --data.input_key context_messages --data.apply_chat_template
    --actor.gradient_checkpointing_enable --ds.packing_samples
    --algo.advantage.gamma 1.0
)
