"""`synthmed <command> ...`: dispatch to the Hydra apps (train, sample, evaluate) and the plain subcommands."""

from __future__ import annotations

import os
import sys

USAGE = """usage: synthmed <command> [args]

commands:
  train      train a model: synthmed train model=ddpm dataset=phantom2d hardware=cpu [key=value ...] [-m]
  sample     write marked synthetic images through the privacy gate (+ privacy report, dataset card, croissant.json):
             synthmed sample run=<run id | config hash> n=100 out=DIR format=png|nifti|dicom gate=refuse|filter|warn|off
  card       model card of a trained run, logged to it: synthmed card run=<run id | config hash> [out=FILE]
  evaluate   full metric suite on a trained run: synthmed evaluate run=<run id | config hash> n_samples=256
  utility    does synthetic data help a classifier? synthmed utility run=<run id | config hash> [real_fraction=[0.1,1]]
  translate  apply a trained translator: synthmed translate run=<run id | config hash> in=DIR out=DIR
             [format=png|nifti] [direction=a2b|b2a]
  fid        FID between two folders or .npz stats: synthmed fid DIR_A DIR_B [--dims 2048]
  compare    report runs side by side: synthmed compare experiment=<name> [runs=<id|hash>,...] [out=DIR]
  bias       every number per patient group, with intervals: synthmed bias run=<run id | config hash> by=[sex,age_band]
  reproduce  re-run a recorded config, check its metrics: synthmed reproduce <config hash> [--tolerance 1e-6]
  reader-study  blinded visual Turing test: synthmed reader-study make|serve|analyze ... (--help for details)
  server     PostgreSQL + MLflow tracking server for a team (127.0.0.1): synthmed server [--port 5000] | server stop
  runs       status and heartbeat of runs, close SIGKILLed ones: synthmed runs list | reap [--older-than 10m]
  weights    download the FID Inception weights (the only download): synthmed weights fetch [--to DIR]

Hydra commands accept any key=value override; `--cfg job` prints the composed config, `--help` lists groups."""


def _hydra_app(module: str):
    def run(argv: list[str]) -> int | None:
        # Hydra reads sys.argv itself: present the subcommand's arguments as the program's own. argv[0] stays the
        # real program, which Lightning's DDP launcher re-executes once per extra rank (see main()).
        sys.argv = [sys.argv[0], *argv]
        app = __import__(f"synthmed.{module}", fromlist=["main"])
        app.main()
        return 0

    return run


def _fid(argv: list[str]) -> int | None:
    from synthmed.metrics.fid_cli import main as fid_main

    return fid_main(argv)


def _plain(module: str):
    def run(argv: list[str]) -> int | None:
        return __import__(f"synthmed.{module}", fromlist=["main"]).main(argv)

    return run


COMMANDS = {"train": _hydra_app("train"), "sample": _hydra_app("sample"), "evaluate": _hydra_app("evaluate"),
            "card": _hydra_app("card"), "translate": _hydra_app("translate"), "bias": _hydra_app("bias"), "fid": _fid,
            "utility": _hydra_app("utility"), "compare": _plain("compare"), "server": _plain("server"),
            "reproduce": _plain("reproduce"), "reader-study": _plain("reader_study.command"), "runs": _plain("runs"),
            "weights": _plain("weights")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS and os.environ.get("LOCAL_RANK", "0") != "0":
        # A DDP rank started by Lightning: it re-runs this program with the job's overrides but without the
        # subcommand, and only training launches ranks.
        command, rest = "train", argv
    if command not in COMMANDS:
        print(f"synthmed: unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
        return 2
    return int(COMMANDS[command](rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
