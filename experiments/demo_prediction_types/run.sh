#!/usr/bin/env bash
# The demo (conf/experiment/demo.yaml: DDPM, 32x32 head phantoms, 1000 steps) with epsilon vs v-prediction, same seed
# and steps, then the table of their final in-domain Frechet distance and MS-SSIM diversity against the real data.
# Usage: experiments/demo_prediction_types/run.sh [ROOT] (default /tmp/i12demo); each run is a few CPU minutes.
set -euo pipefail
ROOT=${1:-/tmp/i12demo}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # small convolutions on a shared CPU: one thread is fastest
COMMON=(experiment=demo seed=0 trainer.enable_progress_bar=false)
synthmed train "${COMMON[@]}" model.process.prediction_type=epsilon "paths.root=${ROOT}_epsilon"
synthmed train "${COMMON[@]}" model.process.prediction_type=v_prediction "paths.root=${ROOT}_v"
python "$(dirname "$0")/table.py" "${ROOT}_epsilon" "${ROOT}_v"
