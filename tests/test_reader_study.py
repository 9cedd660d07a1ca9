"""`synthmed reader-study`: the blinded folder, the analysis of scripted readers, bad input, serving, a trained run
end to end (MLflow child run), and the form driven in a real headless Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.data import export
from synthmed.data.phantom import PhantomDataset
from synthmed.metrics import names as N
from synthmed.reader_study import analysis, command
from synthmed.reader_study.form import RESPONSES_FORMAT
from synthmed.reader_study.study import known_answer_sources, make_study
from synthmed.tracking import mlflow_utils as mt
from synthmed.tracking import tags as tk

SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "reader_study_form.png"


def phantoms(n: int, seed: int, spatial_dims: int = 2, size: int = 16) -> torch.Tensor:
    ds = PhantomDataset("test", spatial_dims=spatial_dims, size=size, n_train=1, n_val=1, n_test=n, seed=seed)
    return ds.image


@pytest.fixture(scope="module")
def oracle_study(tmp_path_factory) -> Path:
    """A 12-case study: 6 real 32 px phantoms vs 6 fresh phantoms of another seed (the ideal generator)."""
    out = tmp_path_factory.mktemp("oracle") / "study"
    make_study(known_answer_sources(phantoms(6, 0, size=32), phantoms(6, 1, size=32), {"run_id": None}), out, seed=3)
    return out


def key_of(folder: Path) -> dict:
    return json.loads((folder / "private" / "key.json").read_text())


def respond(folder: Path, out: Path, reader: str, decide, study_id: str | None = None) -> Path:
    """A response file as the form writes it; `decide(truth, i) -> (answer, confidence, plausibility)`."""
    key = key_of(folder)
    rows = [dict(zip(("answer", "confidence", "plausibility"), decide(c["truth"], i)), case_id=c["case_id"],
                 answered_at="2026-01-01T00:00:00Z", seconds=1.0) for i, c in enumerate(key["cases"])]
    data = {"format": RESPONSES_FORMAT, "study_id": study_id or key["study_id"], "reader_id": reader,
            "responses": rows}
    path = out / f"{reader}.json"
    path.write_text(json.dumps(data))
    return path


def perfect(truth, i):
    return truth, 5, 2 if truth == "synthetic" else 5


def coin(truth, i):  # answers by case parity: right half of the time, whatever the truth
    return ("synthetic" if i % 2 else "real"), 1 + i % 5, 3


def png_chunks(path: Path) -> list[str]:
    data, pos, kinds = path.read_bytes(), 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        kinds.append(kind.decode())
        pos += 12 + length
    return kinds


# ---- the blinded folder ------------------------------------------------------------------------------------------

def test_nothing_served_tells_real_from_synthetic(oracle_study):
    served = oracle_study / "served"
    files = sorted(p.relative_to(served).as_posix() for p in served.rglob("*") if p.is_file())
    assert files == sorted(["index.html", *[f"cases/case_{i:03d}.png" for i in range(1, 13)]])  # neutral, no key
    truth = {c["case_id"]: c["truth"] for c in key_of(oracle_study)["cases"]}
    assert sorted(truth.values()) == ["real"] * 6 + ["synthetic"] * 6
    assert list(truth.values()) != sorted(truth.values()) and list(truth.values()) != sorted(truth.values())[::-1]
    seen = set()
    for path in sorted(served.glob("cases/*.png")):
        with Image.open(path) as im:
            seen.add((im.size, im.mode, im.info.get("dpi"), tuple(sorted(im.text))))
        assert png_chunks(path) == ["IHDR", "IDAT", "IEND"]  # no text, time or size chunk for either kind
        assert b"synthmed" not in path.read_bytes() and b"SYNTHETIC" not in path.read_bytes()
    assert seen == {((32, 32), "L", None, ())}  # one size, one mode (bit depth), no text: whatever the truth
    page = (served / "index.html").read_text()
    embedded = json.loads(re.search(r'id="study">(.*?)</script>', page, re.DOTALL).group(1))
    assert all(set(c) == {"case_id", "src"} for c in embedded["cases"])
    assert "synthetic\"" not in json.dumps(embedded["cases"]) and "real_" not in page


def test_marked_copies_stay_private_and_match_the_served_pixels(oracle_study):
    manifest = json.loads((oracle_study / "manifest.json").read_text())
    key_file = oracle_study / manifest["key_file"]
    assert not key_file.is_relative_to(oracle_study / manifest["served_dir"])
    assert manifest["key_sha256"] == hashlib.sha256(key_file.read_bytes()).hexdigest()
    synthetic = [c for c in key_of(oracle_study)["cases"] if c["truth"] == "synthetic"]
    assert sorted(c["sample_index"] for c in synthetic) == list(range(6))
    for c in synthetic:
        with Image.open(oracle_study / "private" / "synthetic" / f"{c['case_id']}.png") as marked, \
                Image.open(oracle_study / "served" / "cases" / f"{c['case_id']}.png") as served:
            assert marked.text[export.SYNTHETIC_KEY] == "true"
            assert np.array_equal(np.asarray(marked), np.asarray(served))
    assert not list(oracle_study.rglob(".*"))  # atomic writes leave no temporary file


def test_3d_and_16_bit_cases_are_matched_too(tmp_path):
    real, synth = phantoms(2, 0, 3, 16), torch.rand(3, 1, 16, 16, 16) * 2 - 1
    sources = known_answer_sources(real, synth)
    sources.intensity = {"kind": "linear", "native_min": 0, "native_max": 4095, "bits": 16}
    manifest = make_study(sources, tmp_path / "s")
    modes = set()
    for path in (tmp_path / "s" / "served" / "cases").glob("*.png"):
        with Image.open(path) as im:
            modes.add((im.size, im.mode))
    assert modes == {((48, 16), "I;16")} and manifest["image"]["bits"] == 16  # three 16^2 planes side by side


def test_make_refuses_bad_input(tmp_path, oracle_study):
    with pytest.raises(ValueError, match="differ in shape"):
        make_study(known_answer_sources(phantoms(2, 0), phantoms(2, 0, size=32)), tmp_path / "a")
    with pytest.raises(ValueError, match="synthetic images hold NaN"):
        make_study(known_answer_sources(phantoms(2, 0), torch.full((2, 1, 16, 16), float("nan"))), tmp_path / "b")
    with pytest.raises(FileExistsError, match="not empty"):
        make_study(known_answer_sources(phantoms(2, 0), phantoms(2, 1)), oracle_study)


# ---- analysis ----------------------------------------------------------------------------------------------------

def test_analyze_scripted_readers(oracle_study, tmp_path):
    files = [respond(oracle_study, tmp_path, "expert", perfect), respond(oracle_study, tmp_path, "novice", coin)]
    out = tmp_path / "analysis"
    assert command.main(["analyze", str(oracle_study), *map(str, files), f"out={out}"]) == 0
    result = json.loads((out / "reader_study.json").read_text())
    expert, novice = result["readers"]["expert"], result["readers"]["novice"]
    assert expert["accuracy"]["k"] == 12 and expert["auc"]["estimate"] == 1.0
    assert expert["plausibility"]["difference"] == -3.0
    assert novice["accuracy"]["n"] == 12 and novice["verdict"]["code"] == "not_shown_to_differ"
    assert result["pooled"]["n"] == 24 and result["n_readers"] == 2 and result["cohen_kappa"][0]["n"] == 12
    assert result["pooled"]["clustered"]["n_cases"] == 12 and result["pooled"]["clustered"]["n_readers"] == 2
    md = (out / "report.md").read_text()
    assert "not shown to differ" in md and "indistinguishable within" not in md
    assert "<table>" in (out / "report.html").read_text() and "http" not in (out / "report.html").read_text()


def test_analyze_names_a_store_without_the_generator_run(tmp_path, run_root, capsys):
    study = tmp_path / "study"
    make_study(known_answer_sources(phantoms(2, 0), phantoms(2, 1), {"run_id": "0" * 32}), study)
    files = [str(respond(study, tmp_path, "r1", perfect))]
    assert command.main(["analyze", str(study), *files, f"paths.root={run_root}"]) == 2
    assert f"generator run {'0' * 32} is not in sqlite:///{run_root}" in capsys.readouterr().err
    assert (study / "analysis" / "reader_study.json").is_file()  # the report is kept
    assert command.main(["analyze", str(study), *files, "log=false"]) == 0


def _broken(kind: str, study: Path, tmp: Path) -> tuple[list[Path], str]:
    """Response files (and maybe a damaged key) for one kind of bad input, and the file the error must name."""
    good = respond(study, tmp, "r1", perfect)
    if kind == "other_study":
        return [respond(study, tmp, "r2", coin, study_id="0" * 16)], "r2.json"
    if kind == "duplicate_reader":
        twin = tmp / "twin.json"
        shutil.copy(good, twin)
        return [good, twin], "twin.json"
    if kind == "missing_case":
        data = json.loads(good.read_text())
        data["responses"] = data["responses"][:-2]
        good.write_text(json.dumps(data))
        return [good], "r1.json"
    if kind == "bad_rating":
        data = json.loads(good.read_text())
        data["responses"][0]["confidence"] = 7
        good.write_text(json.dumps(data))
        return [good], "r1.json"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["other_study", "duplicate_reader", "missing_case", "bad_rating"])
def test_bad_responses_are_refused_naming_the_file(kind, oracle_study, tmp_path, capsys):
    files, named = _broken(kind, oracle_study, tmp_path)
    with pytest.raises(analysis.StudyError, match=re.escape(named)):
        analysis.analyze(oracle_study, files)
    assert command.main(["analyze", str(oracle_study), *map(str, files), f"out={tmp_path / 'a'}"]) == 2
    assert named in capsys.readouterr().err


def test_a_tampered_key_is_refused(oracle_study, tmp_path):
    study = tmp_path / "copy"
    shutil.copytree(oracle_study, study)
    files = [respond(study, tmp_path, "r1", perfect)]
    key = study / "private" / "key.json"
    data = json.loads(key.read_text())
    data["cases"][0]["truth"] = "real" if data["cases"][0]["truth"] == "synthetic" else "synthetic"
    key.write_text(json.dumps(data, indent=2) + "\n")
    with pytest.raises(analysis.StudyError, match=f"{re.escape(str(key))} has sha256 .* changed"):
        analysis.analyze(study, files)


# ---- serving -----------------------------------------------------------------------------------------------------

def test_serve_binds_localhost_and_never_serves_the_key(oracle_study):
    server = command.make_server(oracle_study, 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        base = f"http://127.0.0.1:{port}"
        assert b"Reader ID" in urllib.request.urlopen(f"{base}/index.html", timeout=10).read()
        assert urllib.request.urlopen(f"{base}/cases/case_001.png", timeout=10).status == 200
        for path in ("/private/key.json", "/../private/key.json", "/%2e%2e/private/key.json", "/manifest.json"):
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(base + path, timeout=10)
            assert err.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


# ---- a trained run, end to end -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template):
    """One FINISHED smoke DDPM run on 16 px phantoms: (root, client, run)."""
    from tests.conftest import train_smoke_run

    root = tmp_path_factory.mktemp("reader_root")
    client, run, _ = train_smoke_run(root, mlflow_template)
    return root, client, run


@pytest.mark.slow  # trains a smoke DDPM (~20-45 s on 2 shared cores)
def test_make_and_analyze_a_trained_run_logs_a_child_report(trained, tmp_path, capsys):
    root, client, run = trained
    study = tmp_path / "study"
    args = ["make", f"run={run.data.tags[tk.CONFIG_HASH][:12]}", "n_real=5", "n_synth=4", f"out={study}",
            f"paths.root={root}", "seed=2"]
    assert command.main(args) == 0
    key = key_of(study)
    assert key["provenance"]["run_id"] == run.info.run_id and key["provenance"]["split"] == "test"
    assert sorted(c.get("split_id", "") for c in key["cases"] if c["truth"] == "real") == \
        [f"phantom-test-{i:05d}" for i in range(5)]
    files = [respond(study, tmp_path, "a", perfect), respond(study, tmp_path, "b", coin)]
    assert command.main(["analyze", str(study), *map(str, files)]) == 0  # the store recorded at make time
    assert "logged as MLflow run" in capsys.readouterr().out
    [child] = [r for r in client.search_runs([run.info.experiment_id]) if r.info.run_id != run.info.run_id]
    assert child.data.tags["mlflow.parentRunId"] == run.info.run_id and child.info.status == "FINISHED"
    assert child.data.tags[tk.REPORT] == "reader_study" and tk.CONFIG_HASH not in child.data.tags
    assert child.data.metrics[N.READER_ACCURACY] == pytest.approx(json.loads(
        (study / "analysis" / "reader_study.json").read_text())["pooled"]["accuracy"]["estimate"])
    assert child.data.params["n_readers"] == "2" and child.data.params["n_cases"] == "9"
    listed = {a.path for a in client.list_artifacts(child.info.run_id, "reader_study")}
    assert listed == {"reader_study/report.md", "reader_study/report.html", "reader_study/reader_study.json"}
    assert mt.find_run(client, run.data.tags[tk.CONFIG_HASH][:12]).info.run_id == run.info.run_id  # hash still resolves


@pytest.mark.slow
def test_make_names_the_bad_option(trained, tmp_path, capsys):
    root, _, run = trained
    assert command.main(["make", f"run={run.info.run_id}", "n_real=500", f"out={tmp_path / 's'}",
                         f"paths.root={root}"]) == 2
    assert "n_real=500" in capsys.readouterr().err
    assert command.main(["make", "colour=blue"]) == 2
    assert "unknown option 'colour'" in capsys.readouterr().err


# ---- the form in a real browser ----------------------------------------------------------------------------------

FLIPPED = {2, 9}  # cases the scripted reader gets wrong on purpose: 10 of 12 right
BACK_AT = 4  # after answering this case the reader goes back once and lowers its plausibility to 1
RELOAD_AT = 6  # after answering this case the page is reloaded: autosave must restore everything


def scripted(truth: str, i: int) -> tuple[str, int, int]:
    wrong = {"real": "synthetic", "synthetic": "real"}
    return (wrong[truth] if i in FLIPPED else truth), 1 + i % 5, 5 if truth == "real" else 2


def answer_with_keyboard(page, answer: str, confidence: int, plausibility: int) -> None:
    page.keyboard.press("KeyR" if answer == "real" else "KeyS")
    page.keyboard.press(f"Digit{confidence}")
    page.keyboard.press(f"Shift+Digit{plausibility}")


def answer_with_mouse(page, answer: str, confidence: int, plausibility: int) -> None:
    page.get_by_label("Real" if answer == "real" else "Synthetic", exact=True).click()
    page.locator(f"#confidence-{confidence}").click()
    page.locator(f"#plausibility-{plausibility}").click()


def test_a_scripted_reader_in_chromium(chromium, oracle_study, tmp_path):
    from playwright.sync_api import expect

    cases = key_of(oracle_study)["cases"]
    context = chromium.new_context(accept_downloads=True, viewport={"width": 900, "height": 640})
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((oracle_study / "served" / "index.html").as_uri())
    unlabelled = page.evaluate("[...document.querySelectorAll('input, progress')].filter(e => !e.labels.length)"
                               ".map(e => e.id)")
    assert unlabelled == []  # every control has a label
    page.locator("#reader").click()
    page.keyboard.type("reader-7")
    page.keyboard.press("Enter")
    i = 0
    while i < len(cases):
        expect(page.locator("#case-h")).to_have_text(f"Case {i + 1} of {len(cases)}")
        answer, confidence, plausibility = scripted(cases[i]["truth"], i)
        if i % 2 == 0:
            answer_with_keyboard(page, answer, confidence, plausibility)
        else:
            answer_with_mouse(page, answer, confidence, plausibility)
        if i == 0:  # the case image really loads from disk (the page's CSP must allow it)
            page.wait_for_function("document.getElementById('image').complete")
            assert page.evaluate("document.getElementById('image').naturalWidth") == 32
        if i == 3:
            page.screenshot(path=str(tmp_path / "form.png"))
        (page.keyboard.press("Enter") if i % 2 == 0 else page.locator("#next").click())
        if i == BACK_AT:
            page.keyboard.press("KeyB")  # back once: the answers are still there, change one
            expect(page.locator("#case-h")).to_have_text(f"Case {i + 1} of {len(cases)}")
            expect(page.locator(f"#confidence-{confidence}")).to_be_checked()
            page.keyboard.press("Shift+Digit1")
            page.locator("#next").click()
        if i == RELOAD_AT:
            page.reload()
            expect(page.locator("#status")).to_have_text(f"Restored {i + 1} saved answers for reader reader-7.")
            expect(page.locator("#answered")).to_have_text(str(i + 1))
        i += 1
    expect(page.locator("#done")).to_be_visible()
    with page.expect_download() as download:
        page.locator("#download").click()
    file = tmp_path / "responses" / download.value.suggested_filename
    download.value.save_as(file)
    assert all(u.startswith(("file:", "blob:", "data:")) for u in requests), requests  # no network

    page.set_viewport_size({"width": 450, "height": 640})  # 900 px at 200 % zoom: nothing may overflow sideways
    page.locator("#review").click()
    expect(page.locator("#case")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    assert page.locator("#next").is_visible() and page.locator("#plausibility-5").is_visible()
    context.close()

    data = json.loads(file.read_text())
    assert data["reader_id"] == "reader-7" and data["study_id"] == key_of(oracle_study)["study_id"]
    assert [r["case_id"] for r in data["responses"]] == [c["case_id"] for c in cases]
    assert data["responses"][BACK_AT]["plausibility"] == 1 and all(r["answered_at"] for r in data["responses"])
    result = analysis.analyze(oracle_study, [file])
    assert result["readers"]["reader-7"]["accuracy"]["k"] == len(cases) - len(FLIPPED)
    if os.environ.get("SYNTHMED_UPDATE_SCREENSHOTS") == "1":  # refresh the README's picture of the form
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "form.png", SCREENSHOT)
    assert (tmp_path / "form.png").stat().st_size < 150_000
