#!/usr/bin/env bash
# The baseline: OpenRLHF's own GAE (lambda 0.95), through OpenRLHF's own command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
python3 -m openrlhf.cli.train_ppo_ray "${COMMON[@]}" \
    --algo.advantage.estimator gae --algo.advantage.lambd 0.95 \
    --ckpt.output_dir ./ckpt/llama3-8b-ppo-gae "$@"
