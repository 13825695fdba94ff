# Shared by run_gae.sh and run_sae.sh: veRL's quick-start PPO (Qwen2.5-0.5B-Instruct on GSM8K),
# as in veRL's documentation, so the two runs differ only in the advantage estimator.
# Needs: a GPU machine with veRL 0.9.1 and its rollout engine (vLLM or SGLang), sae-rl installed
# (`pip install "sae-rl[verl]"`), the model from the Hugging Face hub, and GSM8K prepared with
# veRL's examples/data_preprocess/gsm8k.py into $DATA (default ~/data/gsm8k).
DATA=${DATA:-$HOME/data/gsm8k}
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
GPUS=${GPUS:-1}

COMMON=(
    data.train_files="$DATA/train.parquet"
    data.val_files="$DATA/test.parquet"
    data.train_batch_size=256
    data.max_prompt_length=512
    data.max_response_length=512
    actor_rollout_ref.model.path="$MODEL"
    actor_rollout_ref.actor.optim.lr=1e-6
    actor_rollout_ref.actor.ppo_mini_batch_size=64
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4
    actor_rollout_ref.rollout.name=vllm
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=8
    actor_rollout_ref.rollout.tensor_model_parallel_size=1
    actor_rollout_ref.rollout.gpu_memory_utilization=0.4
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4
    critic.optim.lr=1e-5
    critic.model.path="$MODEL"
    critic.ppo_micro_batch_size_per_gpu=4
    algorithm.kl_ctrl.kl_coef=0.001
    trainer.logger=console
    trainer.val_before_train=False
    trainer.n_gpus_per_node="$GPUS"
    trainer.nnodes=1
    trainer.save_freq=-1
    trainer.test_freq=10
    trainer.total_epochs=15
)
