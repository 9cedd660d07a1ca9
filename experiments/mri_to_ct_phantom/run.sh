#!/usr/bin/env bash
# MRI -> CT on the phantom pairs at CPU scale: pix2pix and cond_ddpm, same data, steps and learning rate, then the
# results table (test split) and a translated folder. Usage: experiments/mri_to_ct_phantom/run.sh [ROOT] (default /tmp/m2c)
set -euo pipefail
ROOT=${1:-/tmp/m2c}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small convolutions on a shared CPU: one thread is fastest
COMMON=(dataset=phantom2d_pairs dataset.size=32 hardware=cpu "paths.root=$ROOT" seed=0
        trainer.max_steps=400 trainer.val_check_interval=200 trainer.enable_progress_bar=false)
synthmed train model=pix2pix "${COMMON[@]}" model.optimizer.lr=1e-3 model.optimizer_d.lr=1e-3
synthmed train model=cond_ddpm "${COMMON[@]}" model.optimizer.lr=1e-3 model.process.num_inference_steps=20
python "$(dirname "$0")/table.py" --root "$ROOT" --split test
