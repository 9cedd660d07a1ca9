#!/usr/bin/env bash
# Unpaired MR -> CT on the head phantom: pix2pix (paired) vs CycleGAN (unpaired, 10 % lesions among the MRs, 40 % among
# the CTs) without and with the structure term, then the table on the held-out test pairs.
# Usage: experiments/unpaired_mr_to_ct_phantom/run.sh [ROOT] (default /tmp/u2c)
set -euo pipefail
ROOT=${1:-/tmp/u2c}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small convolutions on a shared CPU: one thread is fastest
COMMON=(dataset.size=32 "dataset.datamodule.dataset.lesion_radius=[0.1,0.15]" dataset.datamodule.dataset.n_test=128
        hardware=cpu "paths.root=$ROOT" seed=0 trainer.max_steps=400 trainer.val_check_interval=200
        trainer.enable_progress_bar=false "model.generator.features=[16,16,32,64,64,16]"
        model.discriminator.channels=16 model.optimizer.lr=1e-3 model.optimizer_d.lr=1e-3)
UNPAIRED=(model=cyclegan dataset=phantom2d_unpaired dataset.datamodule.dataset.target_lesion_prevalence=0.4
          model.lambda_identity=0)
synthmed train model=pix2pix dataset=phantom2d_pairs "${COMMON[@]}"
synthmed train "${UNPAIRED[@]}" "${COMMON[@]}" model.lambda_structure=0
synthmed train "${UNPAIRED[@]}" "${COMMON[@]}" model.lambda_structure=1
python "$(dirname "$0")/table.py" --root "$ROOT" --split test
