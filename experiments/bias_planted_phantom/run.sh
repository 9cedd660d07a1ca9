#!/usr/bin/env bash
# Planted bias (issue 15): phantoms where sex 1 has half the lesion prevalence of sex 0 (0.16 vs 0.08). Train a
# label- and covariate-conditioned GAN on them; `synthmed utility` trains a lesion classifier on the real data and
# on real + the GAN's images (classes equally often, sex and age of random training subjects, so every sex gets
# both classes about equally often), 3 seeds each, and writes the downstream layer per group; `synthmed bias` then
# reports all three layers, reading the utility run's predictions.
# Usage: experiments/bias_planted_phantom/run.sh [ROOT [TRAIN OVERRIDES...]] (default /tmp/bpp); a quick check of
# the pipeline: UTILITY_ARGS="seeds=1 classifier.steps=5 classifier.encoder_steps=5 n_boot=100" \
#   BIAS_ARGS="n_samples=32 n_boot=50 min_n=5" \
#   run.sh /tmp/bpp_smoke trainer.max_steps=4 trainer.val_check_interval=2 eval.n_samples=8 metrics.domain_steps=20
set -euo pipefail
ROOT=${1:-/tmp/bpp}
shift $(( $# > 0 ? 1 : 0 ))
mkdir -p "$ROOT"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small convolutions on a shared CPU: one thread per job is fastest
synthmed train model=gan model.cond=both dataset=phantom2d_bias dataset.size=32 dataset.datamodule.balance=label \
  'dataset.datamodule.dataset.lesion_radius=[0.15,0.25]' dataset.datamodule.dataset.n_val=256 \
  dataset.datamodule.dataset.n_test=512 hardware=cpu trainer.max_steps=900 trainer.val_check_interval=450 \
  eval.n_samples=128 experiment_name=bias_planted_phantom "paths.root=$ROOT" "$@" | tee "$ROOT/train.out"
RUN=$(awk '/^run id:/ {print $3}' "$ROOT/train.out" | tail -1)
# shellcheck disable=SC2086  # the optional argument lists are meant to split
synthmed utility "run=$RUN" 'regimes=[real,real+synth]' 'real_fraction=[1.0]' seeds=3 'by=[sex,age_band]' \
  'age_bands=[20,40,60,90]' "paths.root=$ROOT" ${UTILITY_ARGS:-}
# shellcheck disable=SC2086
synthmed bias "run=$RUN" 'by=[sex,age_band]' 'age_bands=[20,40,60,90]' n_samples=512 split=test "paths.root=$ROOT" \
  ${BIAS_ARGS:-}
