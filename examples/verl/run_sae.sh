#!/usr/bin/env bash
# The same run with Segmental Advantage Estimation: the paper's threshold p = 0.2 and lambda 0.95
# at segment boundaries. critic.enable=True because veRL starts a critic by itself only for gae.
# Each step's rollouts and advantages go to $DUMP in the trajectory standard, for
# `sae recompute` / `sae inspect` / `sae report` afterwards (drop the line to turn that off).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
DUMP=${DUMP:-$PWD/rollouts-sae}
SAE=(
    algorithm.adv_estimator=sae
    algorithm.gamma=1.0
    critic.enable=True
    +algorithm.sae.threshold=0.2
    +algorithm.sae.lam=0.95
    +algorithm.sae.dump_dir="$DUMP"
    trainer.experiment_name=gsm8k-qwen0.5b-sae
)
python3 -m verl.trainer.main_ppo "${COMMON[@]}" "${SAE[@]}" "$@"
