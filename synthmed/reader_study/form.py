"""The reader's form: one self-contained `index.html` (inline CSS and JS, no third-party asset, no network).

It opens from disk (file://) or from `synthmed reader-study serve`. One case at a time: "real or synthetic",
confidence 1-5 and anatomical plausibility 1-5, with keyboard shortcuts, progress, going back, autosave in the
browser's localStorage (a reload or a crash resumes where the reader was), and at the end a download of the answers
as one JSON file (`RESPONSES_FORMAT`). Every control has a label; sizes are in rem and wrap, so 200 % zoom works.
"""

from __future__ import annotations

import html
import json

RESPONSES_FORMAT = "synthmed.reader_study.responses/1"

_CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:60rem;padding:1rem;line-height:1.4;color:#111;
background:#fafafa}
h1{font-size:1.4rem;margin:.2rem 0 .8rem}
.case{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
figure{margin:0;flex:1 1 18rem;max-width:32rem}
figure img{width:100%;height:auto;image-rendering:pixelated;background:#000;display:block}
form{flex:1 1 16rem}
fieldset{border:1px solid #999;border-radius:.4rem;margin:0 0 .8rem;padding:.4rem .7rem}
legend{font-weight:600}
fieldset label{display:inline-block;margin:.2rem .7rem .2rem 0;padding:.25rem .3rem;cursor:pointer}
input[type=radio]{width:1.1rem;height:1.1rem;vertical-align:middle}
button{font-size:1rem;padding:.5rem 1rem;margin:.2rem .4rem .2rem 0;cursor:pointer}
button:disabled{opacity:.5;cursor:default}
progress{width:100%;height:1rem}
kbd{border:1px solid #888;border-radius:.2rem;padding:0 .25rem;font-size:.9em;background:#fff}
.hint{font-size:.9rem;color:#333}
.status{min-height:1.4rem;color:#063;font-weight:600}
[hidden]{display:none !important}
"""

_BODY = """
<main>
<h1>__TITLE__</h1>
<section id="start" aria-labelledby="start-h">
  <h2 id="start-h">Before you start</h2>
  <p>You will see __N__ images, one at a time. Some are real, some were made by a generative model. For each, say
  whether you think it is <strong>real</strong> or <strong>synthetic</strong>, how confident you are (1 = guessing,
  5 = certain) and how anatomically plausible it looks (1 = implausible, 5 = fully plausible). Your answers are saved
  in this browser as you go; at the end you download them as one file and send it to the study coordinator.</p>
  <label for="reader">Reader ID (given by the coordinator)</label>
  <input id="reader" name="reader" type="text" autocomplete="off" required>
  <button id="begin" type="button">Start</button>
</section>
<section id="case" hidden aria-labelledby="case-h">
  <h2 id="case-h">Case <span id="pos">1</span> of __N__</h2>
  <label for="progress">Answered: <span id="answered">0</span> of __N__</label>
  <progress id="progress" max="__N__" value="0"></progress>
  <div class="case">
    <figure><img id="image" alt="" src=""><figcaption id="caption"></figcaption></figure>
    <form id="answers" onsubmit="return false">
      <fieldset><legend>Real or synthetic? (<kbd>R</kbd> / <kbd>S</kbd>)</legend>
        <label><input type="radio" name="answer" value="real" id="answer-real"> Real</label>
        <label><input type="radio" name="answer" value="synthetic" id="answer-synthetic"> Synthetic</label>
      </fieldset>
      <fieldset><legend>Confidence (<kbd>1</kbd>-<kbd>5</kbd>)</legend>__CONF__</fieldset>
      <fieldset><legend>Anatomical plausibility (<kbd>Shift</kbd>+<kbd>1</kbd>-<kbd>5</kbd>)</legend>__PLAUS__
      </fieldset>
      <button id="back" type="button">Back (<kbd>B</kbd>)</button>
      <button id="next" type="button">Next (<kbd>Enter</kbd>)</button>
    </form>
  </div>
  <p class="hint">Keys: <kbd>R</kbd> real, <kbd>S</kbd> synthetic, <kbd>1</kbd>-<kbd>5</kbd> confidence,
  <kbd>Shift</kbd>+<kbd>1</kbd>-<kbd>5</kbd> plausibility, <kbd>Enter</kbd> or <kbd>N</kbd> next,
  <kbd>B</kbd> back.</p>
</section>
<section id="done" hidden aria-labelledby="done-h">
  <h2 id="done-h">All __N__ cases answered</h2>
  <p>Download your answers and send the file to the study coordinator. You can still go back and change answers.</p>
  <button id="download" type="button">Download responses (JSON)</button>
  <button id="review" type="button">Back to the last case</button>
</section>
<p id="status" class="status" role="status" aria-live="polite"></p>
<p class="hint"><button id="restart" type="button">Start over (erase the answers saved in this browser)</button></p>
</main>
"""

_JS = r"""
"use strict";
const STUDY = JSON.parse(document.getElementById("study").textContent);
const STORE = "synthmed-reader-study/" + STUDY.study_id;
const N = STUDY.cases.length;
const $ = (id) => document.getElementById(id);
let state = load() || {reader_id: "", pos: 0, answers: {}, started_at: null, finished_at: null};
let shownAt = null;

function load() {
  try { return JSON.parse(localStorage.getItem(STORE)); } catch (e) { return null; }
}
function save() { localStorage.setItem(STORE, JSON.stringify(state)); }
function say(text) { $("status").textContent = text; }
function now() { return new Date().toISOString(); }
function current() { return STUDY.cases[state.pos]; }
function entry() {
  const id = current().case_id;
  return state.answers[id] || (state.answers[id] = {case_id: id, seconds: 0});
}
function complete(a) { return a && a.answer && a.confidence && a.plausibility; }
function answeredCount() { return STUDY.cases.filter((c) => complete(state.answers[c.case_id])).length; }

function leaveCase() {
  if (shownAt !== null && state.pos < N) { entry().seconds += (Date.now() - shownAt) / 1000; }
  shownAt = null;
}
function show(section) {
  for (const s of ["start", "case", "done"]) { $(s).hidden = s !== section; }
}
function render() {
  if (state.pos >= N) { show("done"); $("download").focus(); save(); return; }
  show("case");
  const c = current(), a = state.answers[c.case_id] || {};
  $("pos").textContent = state.pos + 1;
  $("image").src = c.src;
  $("image").alt = "Case " + (state.pos + 1) + " of " + N;
  for (const el of document.querySelectorAll("#answers input[type=radio]")) {
    el.checked = String(a[el.name] || "") === el.value;
  }
  const n = answeredCount();
  $("answered").textContent = n;
  $("progress").value = n;
  $("back").disabled = state.pos === 0;
  $("next").disabled = !complete(a);
  if (shownAt === null) { shownAt = Date.now(); }  // re-rendering after an answer keeps the case's clock
}
function setAnswer(name, value) {
  const a = entry();
  a[name] = name === "answer" ? value : Number(value);
  a.answered_at = now();
  save();
  render();
}
function next() {
  if (!complete(state.answers[current().case_id])) { say("Answer all three questions first."); return; }
  leaveCase();
  state.pos += 1;
  if (state.pos >= N && !state.finished_at) { state.finished_at = now(); }
  say("");
  save();
  render();
}
function back() {
  if (state.pos === 0) { return; }
  if (state.pos < N) { leaveCase(); }
  state.pos -= 1;
  save();
  render();
}
function begin() {
  const id = $("reader").value.trim();
  if (!id) { say("Enter your reader ID first."); $("reader").focus(); return; }
  state.reader_id = id;
  state.started_at = state.started_at || now();
  save();
  render();
}
function download() {
  leaveCase();
  const out = {
    format: STUDY.format, study_id: STUDY.study_id, reader_id: state.reader_id,
    started_at: state.started_at, finished_at: state.finished_at || now(), downloaded_at: now(),
    user_agent: navigator.userAgent,
    responses: STUDY.cases.map((c) => state.answers[c.case_id]).filter(complete),
  };
  const blob = new Blob([JSON.stringify(out, null, 2)], {type: "application/json"});
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "responses_" + STUDY.study_id + "_" + state.reader_id.replace(/[^A-Za-z0-9_-]/g, "_") + ".json";
  document.body.appendChild(link);
  link.click();
  link.remove();
  say("Downloaded " + out.responses.length + " answers as " + link.download + ".");
}
function restart() {
  if (!confirm("Erase all answers saved in this browser for this study?")) { return; }
  localStorage.removeItem(STORE);
  shownAt = null;
  state = {reader_id: "", pos: 0, answers: {}, started_at: null, finished_at: null};
  $("reader").value = "";
  show("start");
  say("Answers erased.");
}

document.addEventListener("keydown", (ev) => {
  if ($("case").hidden || ev.ctrlKey || ev.altKey || ev.metaKey) { return; }
  if (ev.target instanceof HTMLInputElement && ev.target.type === "text") { return; }
  const digit = /^Digit([1-5])$/.exec(ev.code) || /^Numpad([1-5])$/.exec(ev.code);
  if (ev.code === "KeyR") { setAnswer("answer", "real"); }
  else if (ev.code === "KeyS") { setAnswer("answer", "synthetic"); }
  else if (digit) { setAnswer(ev.shiftKey ? "plausibility" : "confidence", digit[1]); }
  else if (ev.code === "Enter" || ev.code === "NumpadEnter" || ev.code === "KeyN") { next(); }
  else if (ev.code === "KeyB" || ev.code === "Backspace") { back(); }
  else { return; }
  ev.preventDefault();
});
document.getElementById("answers").addEventListener("change", (ev) => setAnswer(ev.target.name, ev.target.value));
$("begin").addEventListener("click", begin);
$("reader").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { begin(); } });
$("next").addEventListener("click", next);
$("back").addEventListener("click", back);
$("download").addEventListener("click", download);
$("review").addEventListener("click", back);
$("restart").addEventListener("click", restart);

if (state.reader_id) {
  $("reader").value = state.reader_id;
  say("Restored " + answeredCount() + " saved answers for reader " + state.reader_id + ".");
  render();
} else {
  show("start");
}
"""


def _scale(name: str, low: str, high: str) -> str:
    """Five labelled radio buttons 1-5 for `name`, the ends explained."""
    items = []
    for v in range(1, 6):
        text = f"{v} ({low})" if v == 1 else f"{v} ({high})" if v == 5 else str(v)
        items.append(f'<label><input type="radio" name="{name}" value="{v}" id="{name}-{v}"> {text}</label>')
    return "\n        ".join(items)


def render_form(study_id: str, title: str, cases: list[dict]) -> str:
    """The complete `index.html`.

    Args:
        study_id: the study's random id (responses carry it, so `analyze` refuses answers to another study).
        title: shown as the page heading.
        cases: `[{"case_id": ..., "src": "cases/<case_id>.png"}]` in presentation order.
    """
    study = {"format": RESPONSES_FORMAT, "study_id": study_id, "cases": cases}
    data = json.dumps(study).replace("</", "<\\/")  # a JSON string can never close the script element
    body = (_BODY.replace("__TITLE__", html.escape(title)).replace("__N__", str(len(cases)))
            .replace("__CONF__", _scale("confidence", "guessing", "certain"))
            .replace("__PLAUS__", _scale("plausibility", "implausible", "fully plausible")))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n<link rel="icon" href="data:,">\n'
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src 'self' file: data:; "
            f"style-src 'unsafe-inline'; script-src 'unsafe-inline'\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>{body}"
            f'<script type="application/json" id="study">{data}</script>\n<script>{_JS}</script>\n</body>\n</html>\n')
