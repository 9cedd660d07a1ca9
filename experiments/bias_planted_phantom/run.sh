#!/usr/bin/env bash
# Planted bias (issue 15): phantoms where sex 1 has half the lesion prevalence of sex 0 (0.16 vs 0.08). Train a
# label- and covariate-conditioned GAN on them, ask it for every (sex, label) cell equally often, train a lesion
# classifier on real data and on real + those synthetic images (3 seeds each), and report every number per group.
# Usage: experiments/bias_planted_phantom/run.sh [ROOT [TRAIN OVERRIDES...]] (default /tmp/bpp); a quick check of
# the pipeline: DOWNSTREAM_ARGS="--seeds 1 --steps 5 --n-synth 8" BIAS_ARGS="n_samples=32 n_boot=50 min_n=5" \
#   run.sh /tmp/bpp_smoke trainer.max_steps=4 trainer.val_check_interval=2 eval.n_samples=8 metrics.domain_steps=20
set -euo pipefail
ROOT=${1:-/tmp/bpp}
shift $(( $# > 0 ? 1 : 0 ))
HERE=$(dirname "$0")
mkdir -p "$ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small convolutions on a shared CPU: one thread per job is fastest
synthmed train model=gan model.cond=both dataset=phantom2d_bias dataset.size=32 dataset.datamodule.balance=label \
  'dataset.datamodule.dataset.lesion_radius=[0.15,0.25]' dataset.datamodule.dataset.n_val=256 \
  dataset.datamodule.dataset.n_test=512 hardware=cpu trainer.max_steps=900 trainer.val_check_interval=450 \
  eval.n_samples=128 experiment_name=bias_planted_phantom "paths.root=$ROOT" "$@" | tee "$ROOT/train.out"
RUN=$(awk '/^run id:/ {print $3}' "$ROOT/train.out" | tail -1)
# shellcheck disable=SC2086  # the optional argument lists are meant to split
python "$HERE/downstream.py" --root "$ROOT" --run "$RUN" --out "$ROOT/predictions.csv" ${DOWNSTREAM_ARGS:-}
# shellcheck disable=SC2086
synthmed bias "run=$RUN" 'by=[sex,age_band]' 'age_bands=[20,40,60,90]' "predictions=$ROOT/predictions.csv" \
  n_samples=512 split=test "paths.root=$ROOT" ${BIAS_ARGS:-}
