#!/usr/bin/env bash
# The same run with Segmental Advantage Estimation, through sae-rl's wrapper of OpenRLHF's command
# (every OpenRLHF flag works; the critic stays on): the paper's threshold p = 0.2 and lambda 0.95 at
# segment boundaries.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
python3 -m sae_openrlhf.train_ppo_ray "${COMMON[@]}" \
    --algo.advantage.estimator sae --algo.advantage.sae.threshold 0.2 --algo.advantage.sae.lam 0.95 \
    --ckpt.output_dir ./ckpt/llama3-8b-ppo-sae "$@"
