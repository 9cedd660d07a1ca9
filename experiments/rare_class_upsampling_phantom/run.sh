#!/usr/bin/env bash
# Rare-class upsampling on the head phantoms at CPU scale: a label-conditioned DDPM trained on 10% lesions with the
# data's class mix and with class-balanced draws, each asked for lesions at guidance 3 (training's final evaluation),
# 1 and 0 (child runs); a label-conditioned GAN with balanced draws; then the results table and 200 exported lesion
# images.
# Usage: experiments/rare_class_upsampling_phantom/run.sh [ROOT [TRAIN OVERRIDES...]] (default /tmp/rcu); e.g. a quick
# check of the pipeline: run.sh /tmp/rcu_smoke trainer.max_steps=4 trainer.val_check_interval=2 eval.n_samples=8
set -euo pipefail
ROOT=${1:-/tmp/rcu}
shift $(( $# > 0 ? 1 : 0 ))
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small convolutions on a shared CPU: one thread per job is fastest
synthmed train experiment=rare_class_upsampling "paths.root=$ROOT" hydra/launcher=joblib hydra.launcher.n_jobs=2 "$@"
synthmed train model=gan model.cond=label dataset=phantom2d dataset.size=32 dataset.datamodule.balance=label \
  'dataset.datamodule.dataset.lesion_radius=[0.15,0.25]' hardware=cpu trainer.max_steps=3000 \
  trainer.val_check_interval=1000 eval.n_samples=128 experiment_name=rare_class_upsampling "paths.root=$ROOT" "$@"
TABLE="python $(dirname "$0")/table.py --root $ROOT"
for run in $($TABLE --trained-runs --model ddpm); do  # the GAN has no guidance scale to vary
  for gs in 1 0; do
    synthmed evaluate "run=$run" "guidance_scale=$gs" child_run=true n_samples=128 "paths.root=$ROOT"
  done
done
$TABLE
synthmed sample "run=$($TABLE --trained-runs --balance label --model ddpm)" n=200 cond.label=1 "out=$ROOT/lesions" "paths.root=$ROOT"
