"""Unblind a reader study: check the key and every response file, then compute the numbers per reader and pooled.

Every refusal names the file at fault: a key whose sha256 is not the manifest's (tampered, or another study's),
responses to another study, a reader id given twice, missing, unknown or repeated cases, out-of-range ratings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from synthmed.io import file_sha256
from synthmed.reader_study import stats
from synthmed.reader_study.form import RESPONSES_FORMAT
from synthmed.reader_study.study import KEY_FORMAT, MANIFEST_FORMAT, SYNTHETIC

REPORT_FORMAT = "synthmed.reader_study.report/1"
DEFAULT_MARGIN = 0.10  # equivalence margin: |accuracy - 50 %| below 10 points counts as "indistinguishable"
ANSWERS = ("real", "synthetic")
RATING = range(1, 6)


class StudyError(ValueError):
    """Input that cannot be analysed; the message names the file and what was expected."""


@dataclass
class Reader:
    """One reader's answers, aligned with the study's case order."""

    reader_id: str
    file: Path
    said_synth: np.ndarray  # [n_cases] bool
    confidence: np.ndarray  # [n_cases] 1-5
    plausibility: np.ndarray  # [n_cases] 1-5


def _json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"{what} {path} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StudyError(f"{what} {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{what} {path} must hold a JSON object")
    return data


def load_study(folder: str | Path, key_path: str | Path | None = None) -> tuple[dict, dict]:
    """The manifest and the key of the study in `folder`, after checking the key's sha256 against the manifest."""
    folder = Path(folder)
    manifest = _json(folder / "manifest.json", "study manifest")
    if manifest.get("format") != MANIFEST_FORMAT:
        raise StudyError(f"{folder / 'manifest.json'} is not a reader-study manifest (format "
                         f"{manifest.get('format')!r}, expected {MANIFEST_FORMAT!r})")
    key_file = Path(key_path) if key_path else folder / manifest["key_file"]
    if not key_file.is_file():
        raise StudyError(f"key file {key_file} not found (give key=PATH if it was moved)")
    digest = file_sha256(key_file)
    if digest != manifest["key_sha256"]:
        raise StudyError(f"key file {key_file} has sha256 {digest}, but the study manifest records "
                         f"{manifest['key_sha256']}: the key was changed or belongs to another study")
    key = _json(key_file, "key file")
    if key.get("format") != KEY_FORMAT or key.get("study_id") != manifest["study_id"]:
        raise StudyError(f"key file {key_file} does not belong to study {manifest['study_id']}")
    return manifest, key


def _rating(value, name: str, case: str, file: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value not in RATING:
        raise StudyError(f"{file}: case {case} has {name}={value!r}, expected an integer 1-5")
    return value


def load_reader(file: str | Path, manifest: dict) -> Reader:
    """One downloaded response file, checked against the study's manifest."""
    file = Path(file)
    data = _json(file, "response file")
    if data.get("format") != RESPONSES_FORMAT:
        raise StudyError(f"{file} is not a reader-study response file (format {data.get('format')!r}, "
                         f"expected {RESPONSES_FORMAT!r})")
    if data.get("study_id") != manifest["study_id"]:
        raise StudyError(f"{file} answers study {data.get('study_id')!r}, not this study ({manifest['study_id']})")
    reader = str(data.get("reader_id") or "").strip()
    if not reader:
        raise StudyError(f"{file} has no reader_id")
    answers: dict[str, dict] = {}
    for item in data.get("responses") or []:
        case = item.get("case_id")
        if case in answers:
            raise StudyError(f"{file}: case {case} is answered twice")
        if case not in manifest["case_ids"]:
            raise StudyError(f"{file}: case {case!r} is not a case of this study")
        if item.get("answer") not in ANSWERS:
            raise StudyError(f"{file}: case {case} has answer={item.get('answer')!r}, expected one of {ANSWERS}")
        answers[case] = item
    missing = [c for c in manifest["case_ids"] if c not in answers]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise StudyError(f"{file}: {len(missing)} of {len(manifest['case_ids'])} cases not answered ({shown})")
    rows = [answers[c] for c in manifest["case_ids"]]
    return Reader(reader, file, np.array([r["answer"] == SYNTHETIC for r in rows]),
                  np.array([_rating(r.get("confidence"), "confidence", r["case_id"], file) for r in rows]),
                  np.array([_rating(r.get("plausibility"), "plausibility", r["case_id"], file) for r in rows]))


def load_readers(files: list[str | Path], manifest: dict) -> list[Reader]:
    """All response files; a reader id given twice is refused with both file names."""
    if not files:
        raise StudyError("no response files given (the JSON files the readers downloaded)")
    readers, seen = [], {}
    for file in files:
        reader = load_reader(file, manifest)
        if reader.reader_id in seen:
            raise StudyError(f"reader id {reader.reader_id!r} appears in both {seen[reader.reader_id]} and {file}")
        seen[reader.reader_id] = file
        readers.append(reader)
    return readers


def analyze(folder: str | Path, files: list[str | Path], margin: float = DEFAULT_MARGIN,
            key_path: str | Path | None = None) -> dict:
    """The study's numbers: per reader, pooled over all readings, and agreement between readers (a JSON dict)."""
    manifest, key = load_study(folder, key_path)
    truth_of = {c["case_id"]: c["truth"] == SYNTHETIC for c in key["cases"]}
    if set(truth_of) != set(manifest["case_ids"]):
        raise StudyError(f"key file of {folder} does not list the manifest's cases")
    truth = np.array([truth_of[c] for c in manifest["case_ids"]])
    readers = load_readers(files, manifest)
    per_reader = {r.reader_id: stats.reader_summary(truth, r.said_synth, r.confidence, r.plausibility, margin)
                  for r in readers}
    pooled = stats.reader_summary(np.tile(truth, len(readers)), *(np.concatenate([getattr(r, a) for r in readers])
                                                                 for a in ("said_synth", "confidence", "plausibility")),
                                  margin)
    # The pooled verdict rests on the interval that treats cases and readers as samples, not on the exact test over
    # all readings (which counts a case seen by ten readers as ten independent observations).
    pooled["clustered"] = stats.clustered_accuracy(np.stack([r.said_synth == truth for r in readers], axis=1), margin)
    pooled["verdict"] = pooled["clustered"]["verdict"]
    said = {r.reader_id: r.said_synth.astype(int) for r in readers}
    return {"format": REPORT_FORMAT, "study_id": manifest["study_id"], "title": manifest.get("title"),
            "run_id": key.get("provenance", {}).get("run_id"), "provenance": key.get("provenance", {}),
            "n_cases": len(truth), "n_real": int((~truth).sum()), "n_synthetic": int(truth.sum()),
            "n_readers": len(readers), "margin": margin, "alpha": stats.ALPHA,
            "readers": per_reader, "pooled": pooled,
            "cohen_kappa": stats.cohen_pairs(said),
            "fleiss_kappa": stats.fleiss(np.stack([said[r] for r in sorted(said)], axis=1)),
            "files": [{"reader_id": r.reader_id, "file": r.file.name,
                       "sha256": file_sha256(r.file)} for r in readers]}
