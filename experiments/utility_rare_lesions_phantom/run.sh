#!/usr/bin/env bash
# Downstream utility of a label-conditioned GAN at 10 % lesion prevalence (16 px head phantoms, CPU): train the
# generator, then `synthmed utility` over real fractions 0.1, 0.25 and 0.5 with 5 seeds.
# Usage: experiments/utility_rare_lesions_phantom/run.sh [ROOT] (default /tmp/utility_rare_lesions)
set -euo pipefail
ROOT=${1:-/tmp/utility_rare_lesions}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small convolutions on a shared CPU: one thread is fastest
synthmed train model=gan model.cond=label dataset=phantom2d dataset.size=16 dataset.datamodule.balance=label \
  'dataset.datamodule.dataset.lesion_radius=[0.15,0.25]' dataset.datamodule.dataset.n_test=300 hardware=cpu \
  trainer.max_steps=1500 trainer.val_check_interval=500 eval.n_samples=64 experiment_name=utility_rare_lesions \
  "paths.root=$ROOT" | tee "$ROOT.train.log"
RUN=$(awk '/^run id:/ {print $3}' "$ROOT.train.log" | tail -1)
synthmed utility "run=$RUN" 'real_fraction=[0.1,0.25,0.5]' seeds=5 "paths.root=$ROOT" "out=$ROOT/utility"
