"""`synthmed card run=<run id | config hash>`: a model card for a trained run, written locally and logged to the run."""

from __future__ import annotations

import json
from pathlib import Path

import hydra
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from synthmed.config import CONF_DIR, register_resolvers
from synthmed.io import atomic_write
from synthmed.reports import cards
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk
from synthmed.tracking.checkpoints import refuse_url
from synthmed.tracking.refs import run_ref

ARTIFACT = "card/MODEL_CARD.md"


def training_size(client: MlflowClient, run_id: str) -> int | None:
    """Training images of the run, from its recorded data/dataset.json when it has the count."""
    try:
        doc = json.loads(Path(client.download_artifacts(run_id, "data/dataset.json")).read_text())
    except Exception:  # noqa: BLE001 - older runs have no dataset record: the card says "unknown"
        return None
    n = doc.get("n_train")
    return int(n) if isinstance(n, (int, float)) else None


def card(cfg: DictConfig) -> Path:
    """Write `cfg.out` (default: MODEL_CARD.md under paths.root/cards/<run id>/) and log it to the run."""
    ref = run_ref(cfg, "run")
    refuse_url(ref, "run")
    client = MlflowClient(mt.tracking_uri(cfg.tracking_uri, cfg.paths.root))
    run = mt.find_run(client, ref)
    run_id = run.info.run_id
    record = cards.run_record(client, run_id)
    text = cards.model_card(record, training_size(client, run_id))
    out = Path(cfg.out) if cfg.out else Path(cfg.paths.root) / "cards" / run_id / "MODEL_CARD.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, text)
    mt.log_text(client, run_id, text, ARTIFACT)
    mt.set_tags(client, run_id, {tk.MODEL_CARD: ARTIFACT})
    perf = "with" if cards.performance(record) else "without"
    print(f"model card of run {run_id} ({perf} a utility performance block): {out}; logged as {ARTIFACT}", flush=True)
    return out


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="card")
def main(cfg: DictConfig) -> None:
    card(cfg)


register_resolvers()

if __name__ == "__main__":
    main()
