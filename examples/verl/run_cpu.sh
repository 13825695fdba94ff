#!/usr/bin/env bash
# veRL 0.9.1's real PPO trainer (python -m verl.trainer.main_ppo) with SAE, on a CPU-only machine.
#
# A harness for trying and testing the sae-rl adapter inside veRL, NOT a training setup: a random
# 2-layer Qwen2, a toy task, 2 steps of 4 prompts, everything in fp32 on the CPU (about a minute
# or two). The support code is in examples/verl/cpu/ (see its modules' headers):
#   verl_cpu_platform.py  a "cpu" veRL platform (gloo), and the patches veRL needs off-GPU
#   verl_cpu_rollout.py   rollout.name=hf_cpu: transformers' generate as veRL's rollout server
#   verl_cpu_assets.py    builds the model, tokenizer and prompts (cached in $SAE_CPU_HOME)
#   verl_cpu_reward.py    the task's reward function
#
#   bash examples/verl/run_cpu.sh                             # legacy trainer, adv_estimator=sae
#   bash examples/verl/run_cpu.sh algorithm.adv_estimator=gae # any Hydra override, applied last
#   bash examples/verl/run_cpu.sh trainer.use_v1=True         # the v1 trainer (TransferQueue)
#   bash examples/verl/run_cpu.sh +algorithm.sae.dump_dir=/tmp/rollouts   # trajectory files
#
# Runs the python of the current environment ($PYTHON, else python3 on PATH), which needs sae-rl
# with its verl extra (`./dev setup`, then `source .venv/bin/activate`). Prints veRL's console
# metrics each step (with sae: sae/boundary_fraction, sae/mean_segment_length); exits 0 when the
# training finished. Ray is started privately for the run (never joins a running cluster).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PY=${PYTHON:-python3}

# Ray workers inherit these: they import the platform (and through it the rollout) with veRL.
export PYTHONPATH="$HERE/cpu${PYTHONPATH:+:$PYTHONPATH}"
export VERL_USE_EXTERNAL_MODULES="verl_cpu_platform${VERL_USE_EXTERNAL_MODULES:+,$VERL_USE_EXTERNAL_MODULES}"
export VERL_PLATFORM=cpu
export VERL_ENGINE_DEVICE=cuda  # veRL registers its FSDP engines for cuda/npu only; the code is device-agnostic
export TOKENIZERS_PARALLELISM=false
export RAY_DEDUP_LOGS=0

ASSETS=$("$PY" "$HERE/cpu/verl_cpu_assets.py" "${SAE_CPU_HOME:-$HOME/.cache/sae-rl/verl-cpu}" | tail -n 1)
RUN_DIR=${SAE_CPU_RUN_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/sae-verl-cpu.XXXXXX")}
FP32="{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"

ARGS=(
    # the task and its data
    data.train_files="$ASSETS/train.parquet"
    data.val_files="$ASSETS/val.parquet"
    data.train_batch_size=4
    data.max_prompt_length=32
    data.max_response_length=32
    data.dataloader_num_workers=0
    reward.custom_reward_function.path="$HERE/cpu/verl_cpu_reward.py"
    reward.custom_reward_function.name=compute_score
    reward.num_workers=1
    # SAE (critic.enable: veRL starts a critic by itself only for gae)
    algorithm.adv_estimator=sae
    critic.enable=True
    # the policy: FSDP2 in fp32 on the CPU, sdpa attention, no compilation
    actor_rollout_ref.model.path="$ASSETS/model"
    actor_rollout_ref.model.use_remove_padding=False
    actor_rollout_ref.model.enable_gradient_checkpointing=False
    +actor_rollout_ref.model.override_config.attn_implementation=sdpa
    actor_rollout_ref.actor.strategy=fsdp2
    actor_rollout_ref.actor.use_torch_compile=False
    actor_rollout_ref.actor.fsdp_config.use_torch_compile=False
    +actor_rollout_ref.actor.fsdp_config.mixed_precision="$FP32"
    actor_rollout_ref.actor.ppo_mini_batch_size=4
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2
    actor_rollout_ref.actor.optim.lr=1e-4
    actor_rollout_ref.ref.fsdp_config.use_torch_compile=False
    +actor_rollout_ref.ref.fsdp_config.mixed_precision="$FP32"
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4
    # the rollout: transformers' generate behind veRL's server API, weights synced in process
    actor_rollout_ref.rollout.name=hf_cpu
    actor_rollout_ref.rollout.tensor_model_parallel_size=1
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4
    actor_rollout_ref.rollout.agent.num_workers=1
    actor_rollout_ref.rollout.checkpoint_engine.backend=naive
    # the critic: same model with a value head (sdpa: veRL's loader asks for flash-attention)
    critic.strategy=fsdp2
    critic.model.path="$ASSETS/model"
    critic.model.use_remove_padding='${actor_rollout_ref.model.use_remove_padding}'
    critic.model.enable_gradient_checkpointing=False
    +critic.model.override_config.attn_implementation=sdpa
    critic.fsdp.use_torch_compile=False
    +critic.fsdp.mixed_precision="$FP32"
    critic.ppo_micro_batch_size_per_gpu=2
    critic.optim.lr=1e-4
    # the machine: one "GPU" slot (a fake Ray GPU), a private Ray instance, one TransferQueue unit
    trainer.device=cpu
    trainer.n_gpus_per_node=1
    trainer.nnodes=1
    +ray_kwargs.ray_init.address=local
    +ray_kwargs.ray_init.num_gpus=1
    ray_kwargs.ray_init.num_cpus=16  # logical: veRL's actors and placement bundles ask for more than 2
    +ray_kwargs.ray_init.include_dashboard=False
    transfer_queue.backend.SimpleStorage.num_data_storage_units=1
    # two steps, logged to the console
    trainer.use_v1=False
    trainer.total_epochs=1
    trainer.total_training_steps=2
    trainer.val_before_train=False
    trainer.test_freq=-1
    trainer.save_freq=-1
    trainer.logger=console
    trainer.project_name=sae-rl-cpu
    trainer.experiment_name=run-cpu
    trainer.default_local_dir="$RUN_DIR/checkpoints"
    hydra.run.dir="$RUN_DIR/hydra"
)

exec "$PY" -m verl.trainer.main_ppo "${ARGS[@]}" "$@"
