"""`synthmed reader-study make|serve|analyze`: a blinded visual Turing test of a trained run, run by experts.

    synthmed reader-study make run=<id | hash> n_real=50 n_synth=50 out=DIR     # the study folder (see study.py)
    synthmed reader-study serve DIR [port=8000]                                  # DIR/served on 127.0.0.1 only
    synthmed reader-study analyze DIR responses/*.json [margin=0.10]             # unblind, report, log to MLflow

The images come from `source_images` only (the run's sampler and its data set's held-out split); the analysis is
written to DIR/analysis/ (report.md, report.html, reader_study.json) and logged as a child run of the generator run
tagged `synthmed.report=reader_study`.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from synthmed.reader_study import analysis, report
from synthmed.reader_study.study import SERVED, Sources, make_study, write_text

USAGE = """usage:
  synthmed reader-study make run=<run id | config hash> [n_real=50] [n_synth=50] out=DIR [seed=0] [split=test]
                             [title=...] [paths.root=DIR] [tracking_uri=URI] [device=cpu] [checkpoint=final.ckpt]
                             [batch_size=16]
  synthmed reader-study serve DIR [port=8000]
  synthmed reader-study analyze DIR RESPONSES.json ... [margin=0.10] [key=PATH] [out=DIR/analysis] [log=true]
                                [paths.root=DIR] [tracking_uri=URI]"""

MAKE = {
    "run": None,  # MLflow run id or config-hash prefix (>= 6 hex digits) of the generator
    "n_real": "50",  # real images shown: the first n of `split`
    "n_synth": "50",  # synthetic images shown: samples 0..n-1 of `seed`
    "out": None,  # the study folder to create (must be new or empty)
    "seed": "0",  # sampling seed and presentation shuffle
    "split": "test",  # real images from this split: held out from training
    "title": "Reader study",  # heading of the form and the report
    "paths.root": None,  # store root (null: $SYNTHMED_ROOT or the current directory)
    "tracking_uri": None,  # null: $MLFLOW_TRACKING_URI, else sqlite:///<paths.root>/mlflow.db
    "device": "cpu",  # torch device the generator samples on
    "checkpoint": "final.ckpt",  # file under the run's checkpoints/ artifact folder
    "batch_size": "16",  # samples per forward pass (memory only)
}
SERVE = {"port": "8000"}  # TCP port on 127.0.0.1 (0 = any free port)
ANALYZE = {
    "margin": str(analysis.DEFAULT_MARGIN),  # equivalence margin as a share: 0.10 = 10 points around 50 %
    "key": None,  # key file (null: the one the manifest names, DIR/private/key.json)
    "out": None,  # report folder (null: DIR/analysis)
    "log": "true",  # log the report as a child run of the generator run
    "paths.root": None,  # store root (null: the store the study was made from)
    "tracking_uri": None,  # null: the study's store, else $MLFLOW_TRACKING_URI
}


def parse(argv: list[str], options: dict) -> tuple[list[str], dict]:
    """Positional arguments and `key=value` options (unknown keys refused, naming the key)."""
    opts, positional = dict(options), []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            positional.append(arg)
        elif key in options:
            opts[key] = value
        else:
            raise ValueError(f"unknown option '{key}' (known: {', '.join(options)})")
    return positional, opts


def _int(opts: dict, key: str, low: int = 0) -> int:
    try:
        value = int(opts[key])
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be an integer, got {opts[key]!r}") from None
    if value < low:
        raise ValueError(f"{key} must be >= {low}, got {value}")
    return value


def _root(opts: dict) -> str:
    return opts["paths.root"] or os.environ.get("SYNTHMED_ROOT", ".")


def source_images(opts: dict) -> Sources:
    """The run's samples and the first `n_real` images of its data set's `split`, on one intensity mapping."""
    import torch
    from omegaconf import OmegaConf

    from synthmed.config import instantiate, register_resolvers
    from synthmed.evaluation.step import source_request
    from synthmed.tracking.restore import provenance, restore_for_sampling

    register_resolvers()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per small file is noise
    root = _root(opts)
    cfg = OmegaConf.create({"run": opts["run"], "tracking_uri": opts["tracking_uri"], "checkpoint": opts["checkpoint"],
                            "device": opts["device"], "batch_size": _int(opts, "batch_size", 1),
                            "paths": {"root": root, "cache_dir": f"{root}/.cache/synthmed"}})
    client, restored = restore_for_sampling(cfg)
    datamodule = instantiate(restored.cfg.dataset.datamodule, "dataset.datamodule")
    split, n_real, seed = opts["split"], _int(opts, "n_real", 1), _int(opts, "seed")
    ds = datamodule.split(split)
    if n_real > len(ds):
        raise ValueError(f"n_real={n_real}, but split '{split}' of run {opts['run']} holds {len(ds)} images")
    items = [ds.item(i, augment=False) if hasattr(ds, "item") else ds[i] for i in range(n_real)]
    n_synth = _int(opts, "n_synth", 1)
    cond = source_request(restored.model, datamodule, n_synth, split)  # translators translate the split's sources
    synth = restored.model.sample(n_synth, generator=torch.Generator().manual_seed(seed), cond=cond).cpu()
    meta = provenance(restored, seed) | {"split": split, "checkpoint": opts["checkpoint"],
                                         "tracking_uri": client.tracking_uri}
    return Sources(torch.stack([it["image"] for it in items]), synth,
                   [str(it.get("id", f"{split}_{i}")) for i, it in enumerate(items)],
                   dict(restored.dataset.get("intensity") or {}), meta)


def make(argv: list[str]) -> int:
    _, opts = parse(argv, MAKE)
    if not opts["run"] or not opts["out"]:
        raise ValueError("make needs run=<run id | config hash> and out=DIR")
    manifest = make_study(source_images(opts), opts["out"], _int(opts, "seed"), opts["title"])
    out = Path(opts["out"])
    print(f"study {manifest['study_id']}: {manifest['n_cases']} cases ({manifest['n_real']} real, "
          f"{manifest['n_synthetic']} synthetic) in {out}\n"
          f"  give readers only {out / SERVED}/ (open index.html in a browser, or: synthmed reader-study serve {out})\n"
          f"  keep {out / manifest['key_file']} away from readers (sha256 {manifest['key_sha256'][:16]}...)")
    return 0


def make_server(folder: str | Path, port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server on 127.0.0.1 over `folder/served` only (the key lies outside it)."""
    served = Path(folder) / SERVED
    if not (served / "index.html").is_file():
        raise FileNotFoundError(f"{served / 'index.html'} not found: is {folder} a study made by "
                                "`synthmed reader-study make`?")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    return ThreadingHTTPServer(("127.0.0.1", port), handler)


def serve(argv: list[str]) -> int:
    positional, opts = parse(argv, SERVE)
    if len(positional) != 1:
        raise ValueError("serve needs the study folder: synthmed reader-study serve DIR")
    server = make_server(positional[0], _int(opts, "port"))
    print(f"serving {Path(positional[0]) / SERVED} on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def write_report(result: dict, out: Path) -> Path:
    """report.md, report.html and reader_study.json (what a data or model card reads) in `out`."""
    write_text(out / "report.md", report.markdown(result))
    write_text(out / "report.html", report.to_html(result))
    write_text(out / "reader_study.json", json.dumps(result, indent=2) + "\n")
    return out


def log_to_mlflow(result: dict, out: Path, opts: dict) -> str:
    """The report as a child run of the generator run (`synthmed.report=reader_study`, artifacts reader_study/)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from synthmed.metrics import names as N
    from synthmed.tracking import mlflow_utils as mt

    recorded = result["provenance"].get("tracking_uri")
    uri = opts["tracking_uri"] or (mt.tracking_uri(None, opts["paths.root"]) if opts["paths.root"] else None)
    client = MlflowClient(uri or recorded or mt.tracking_uri(None, _root(opts)))
    pooled = result["pooled"]
    metrics = {N.READER_ACCURACY: pooled["accuracy"]["estimate"], N.READER_AUC: pooled["auc"]["estimate"],
               N.READER_FLEISS_KAPPA: result["fleiss_kappa"]["kappa"],
               N.READER_EQUIVALENCE_P: pooled["equivalence"]["p_value"],
               N.READER_PLAUSIBILITY_DIFF: pooled["plausibility"]["difference"]}
    params = {"study_id": result["study_id"], "n_cases": str(result["n_cases"]), "n_readers": str(result["n_readers"]),
              "n_readings": str(pooled["n"]), "margin": str(result["margin"]), "verdict": pooled["verdict"]["code"]}
    try:
        parent = client.get_run(result["run_id"])
    except MlflowException:
        raise LookupError(f"generator run {result['run_id']} is not in {client.tracking_uri}: give paths.root= or "
                          f"tracking_uri= of its store, or log=false (the report is in {out})") from None
    return mt.report_run(client, parent.info.experiment_id, "reader_study", out,
                         f"{parent.info.run_name}-reader_study", parent=parent, metrics=metrics, params=params,
                         artifact_path="reader_study")


def analyze(argv: list[str]) -> int:
    positional, opts = parse(argv, ANALYZE)
    if len(positional) < 2:
        raise ValueError("analyze needs the study folder and at least one response file: "
                         "synthmed reader-study analyze DIR responses/*.json")
    try:
        margin = float(opts["margin"])
    except ValueError:
        raise ValueError(f"margin must be a number (0.10 = 10 points), got {opts['margin']!r}") from None
    folder = Path(positional[0])
    result = analysis.analyze(folder, positional[1:], margin, opts["key"])
    out = write_report(result, Path(opts["out"] or folder / "analysis"))
    print(report.markdown(result))
    print(f"report: {out / 'report.md'}\n        {out / 'report.html'}\n        {out / 'reader_study.json'}")
    if opts["log"].lower() in ("1", "true", "yes", "on"):
        if result["run_id"]:
            print(f"logged as MLflow run {log_to_mlflow(result, out, opts)} (child of {result['run_id']}, "
                  "artifacts reader_study/)")
        else:
            print("not logged to MLflow: the study's images do not come from a synthmed run")
    return 0


COMMANDS = {"make": make, "serve": serve, "analyze": analyze}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help", "help"):
        print(USAGE + "\n\n" + (__doc__ or "").split("\n\n", 1)[0])
        return 0
    if not argv or argv[0] not in COMMANDS:
        print(f"synthmed reader-study: give one of {', '.join(COMMANDS)}" + (f", not '{argv[0]}'" if argv else "")
              + f"\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]](argv[1:])
    except (LookupError, ValueError, FileExistsError, FileNotFoundError) as err:
        print(f"synthmed reader-study {argv[0]}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
