#!/usr/bin/env bash
# The baseline: veRL's own GAE (gamma 1, lambda 0.95), critic on.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
GAE=(
    algorithm.adv_estimator=gae
    algorithm.gamma=1.0
    algorithm.lam=0.95
    trainer.experiment_name=gsm8k-qwen0.5b-gae
)
python3 -m verl.trainer.main_ppo "${COMMON[@]}" "${GAE[@]}" "$@"
