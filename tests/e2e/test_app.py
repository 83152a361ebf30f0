"""End-to-end tests: the real app window (tauri-driver -> WebKitWebDriver, under Xvfb), the real
starter model in test-assets/, and (once the core's Hub client lands) the local Hub test server.
Run through scripts/test-e2e.sh, which builds everything and sets the environment:
  QLORA_APP          the app binary
  QLORA_STUDIO_HOME  a fresh folder for the app's settings and conversations
  QLORA_STUDIO_LOCAL_MODELS  the folder holding SmolLM2-135M-Instruct
  SCREENSHOTS        where page screenshots go (docs/screenshots/)
Each test starts from the Models page; a failing test leaves a screenshot named failed-<test>.png
in $E2E_ARTIFACTS and the others still run."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import traceback

from webdriver import Driver

APP = os.environ["QLORA_APP"]
SHOTS = os.environ.get("SCREENSHOTS", "docs/screenshots")
ARTIFACTS = os.environ.get("E2E_ARTIFACTS", "/tmp/qlora-e2e")
MODELS_DIR = os.environ["QLORA_STUDIO_LOCAL_MODELS"]
STARTER = "SmolLM2-135M-Instruct"
# The adapter folder test_train_a_few_steps_with_the_demo_config made (test_chat_with_the_adapter uses it).
TRAINED_ADAPTER = None
# A peft adapter recorded for the tiny random llama fixture: another base than the starter model.
OTHER_BASE_ADAPTER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "peft", "adapter")
# Each page, and an element that shows its first calls to the shell have come back.
PAGES = {
    "models": "[data-testid=curated] .card",
    "library": "[data-testid=library] > *",
    "planner": "[data-testid=plan-gpu] option:nth-child(2)",
    "train": "[data-testid=wizard] button",
    "chat": "[data-testid=conversations] button",
    "settings": "[data-testid=settings-save]",
    "system": "[data-testid=ram]",
}


def shot(d, name, center=None):
    """A screenshot into docs/screenshots, with `center` (a selector) scrolled into view."""
    if center:
        d.js("const e = document.querySelector(arguments[0]); if (e) e.scrollIntoView({block: 'center'})", center)
    else:
        d.js("window.scrollTo(0, 0)")
    time.sleep(0.2)
    d.screenshot(os.path.join(SHOTS, name))


def page(d, name):
    d.click(f"[data-testid=nav-{name}]")
    d.wait(lambda: d.js("return document.querySelector('main').dataset.page") == name, 10, f"page {name}")
    d.find("main h1")


def test_every_page_opens_and_is_screenshotted(d):
    os.makedirs(SHOTS, exist_ok=True)
    for name in PAGES:
        print(f"  page {name}", flush=True)
        page(d, name)
        d.find(PAGES[name], timeout=15)
        time.sleep(0.3)
        d.screenshot(os.path.join(SHOTS, f"{name}.png"))


def test_starter_model_is_listed_ready(d):
    page(d, "models")
    card = f"[data-testid='local-{STARTER}']"
    d.find(card, timeout=10)
    assert d.exists(f"{card} [data-testid=ready]"), d.text(card)
    # The curated list holds the four target models and the test model.
    d.wait(lambda: len(d.find_all("[data-testid=curated] .card")) == 5, 10, "five curated models")
    for mid in ["TinyLlama/TinyLlama-1.1B-Chat-v1.0", "microsoft/phi-2", "google/gemma-2b", "mistralai/Mistral-7B-v0.1"]:
        assert d.exists(f"[data-testid='model-{mid}']"), mid


def test_bad_model_id_gets_a_clear_message_and_app_stays_usable(d):
    page(d, "models")
    d.type("[data-testid=search]", "not/a/model")
    d.click("[data-testid=search-go]")
    d.wait_text("[data-testid=search-error]", "'not/a/model' is not a Hub model id")
    page(d, "planner")
    d.type("[data-testid=plan-model]", "gpt2")
    d.click("[data-testid=plan-go]")
    d.wait_text("[data-testid=plan-error]", "'gpt2' is not a Hub model id")
    d.screenshot(os.path.join(SHOTS, "planner-bad-input.png"))
    page(d, "system")  # still usable


def test_settings_refuse_bad_input_and_offline_mode_shows(d):
    page(d, "settings")
    d.type("[data-testid=endpoint]", "huggingface.co")
    d.click("[data-testid=settings-save]")
    d.wait_text("[data-testid=settings-error]", "the endpoint must be a web address")
    d.type("[data-testid=endpoint]", "http://127.0.0.1:9/")
    d.click("[data-testid=offline]")
    d.click("[data-testid=settings-save]")
    d.find("[data-testid=settings-saved]")
    d.find("[data-testid=offline-banner]")
    # Saved to disk: a restart would keep it.
    d.wait(lambda: '"offline": true' in open(os.path.join(os.environ["QLORA_STUDIO_HOME"], "settings.json")).read(), 5, "settings on disk")
    d.click("[data-testid=offline]")
    d.click("[data-testid=settings-save]")
    d.wait(lambda: not d.exists("[data-testid=offline-banner]"), 5, "the offline banner to go")


def test_system_page_reads_the_machine(d):
    page(d, "system")
    d.find("[data-testid=ram]", timeout=15)
    body = d.js("return document.querySelector('main').innerText")
    assert ("No NVIDIA GPU" in body) or d.exists("[data-testid=gpu-0]"), body
    assert "free" in body, body
    if d.exists("[data-testid=gpu-0]"):
        # Utilisation and temperature through NVML, or n/a where the card does not say.
        assert "busy" in d.text("[data-testid=gpu-0] [data-testid=gpu-readings]") or "n/a" in d.text("[data-testid=gpu-0] [data-testid=gpu-readings]")
    else:
        assert "No GPU memory, utilisation or temperature to show" in d.text("[data-testid=no-gpu]"), body
    # Only devices that exist are offered: here the CPU (and auto).
    assert "Compute devices this build can use: auto, cpu" in d.text("[data-testid=devices]"), d.text("[data-testid=devices]")
    page(d, "settings")
    options = d.js("return [...document.querySelectorAll('[data-testid=device] option')].map(o => o.value)")
    assert options[:2] == ["auto", "cpu"] and all(o.startswith("cuda:") for o in options[2:]), options
    assert d.js("return document.querySelector('[data-testid=device]').value") == "auto"


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo_smollm2.yaml")


def wizard_to_dataset(d):
    page(d, "train")
    if d.exists("[data-testid=wizard-restart]"):
        d.click("[data-testid=wizard-restart]")
    d.type("[data-testid=train-base]", starter_path())
    d.click("[data-testid=wizard-next]")
    d.type("[data-testid=train-config]", DEMO_CONFIG)


def test_train_wizard_refuses_a_file_that_is_not_a_dataset(d):
    notes = os.path.join(tempfile.mkdtemp(), "notes.jsonl")
    with open(notes, "w") as f:
        f.write("these are my notes, not a dataset\n")
    wizard_to_dataset(d)
    d.type("[data-testid=train-dataset]", notes)
    d.click("[data-testid=dataset-preview-go]")
    d.wait_text("[data-testid=dataset-error]", "notes.jsonl", timeout=60)
    shot(d, "train-bad-dataset.png")
    d.type("[data-testid=train-dataset]", "/nonexistent/data.jsonl")
    d.click("[data-testid=dataset-preview-go]")
    d.wait_text("[data-testid=dataset-error]", "dataset file '/nonexistent/data.jsonl' does not exist")


def test_train_without_a_preset_gets_a_config_made_for_the_model(d):
    page(d, "train")
    if d.exists("[data-testid=wizard-restart]"):
        d.click("[data-testid=wizard-restart]")
    d.type("[data-testid=train-base]", starter_path())
    d.click("[data-testid=wizard-next]")
    d.type("[data-testid=train-config]", "")
    d.type("[data-testid=train-dataset]", os.path.join(REPO, "datasets", "quillbury_mayor.jsonl"))
    d.click("[data-testid=dataset-preview-go]")
    d.wait_text("[data-testid=dataset-preview]", "trained (loss)", timeout=60)
    d.click("[data-testid=wizard-next]")
    d.wait_text("[data-testid=train-defaults]", "No preset: a config made for this model", timeout=60)
    assert "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj" in d.text("[data-testid=train-defaults]")
    # The CPU gets the small first-run config: rank 16, context 256, batch 4.
    values = d.js("return ['train-rank', 'train-context', 'train-batch'].map(t => document.querySelector(`[data-testid=${t}]`).value)")
    assert values == ["16", "256", "4"], values
    d.wait_text("[data-testid=live-verdict]", "Fits", timeout=60)
    shot(d, "train-no-preset.png")


def loss_points(d):
    return int(d.js("const c = document.querySelector('[data-testid=loss-chart]'); return c ? Number(c.dataset.points) : 0") or 0)


def test_train_a_few_steps_with_the_demo_config(d):
    wizard_to_dataset(d)
    d.type("[data-testid=train-dataset]", "")
    d.click("[data-testid=dataset-preview-go]")
    d.wait_text("[data-testid=dataset-preview]", "trained (loss)", timeout=60)
    shot(d, "train-dataset.png")
    d.click("[data-testid=wizard-next]")
    d.type("[data-testid=train-output]", os.path.join(tempfile.mkdtemp(), "demo-run"))
    d.type("[data-testid=train-steps]", "6")
    d.wait_text("[data-testid=live-verdict]", "Fits", timeout=60)
    shot(d, "train-settings.png")
    d.click("[data-testid=train-start]")
    # The chart moves: points appear step by step.
    d.wait(lambda: loss_points(d) >= 2, 300, "two training steps on the chart")
    shot(d, "train.png")
    # A training step redraws the chart and the numbers, not Cancel.
    d.js("window.__trainCancel = document.querySelector('[data-testid=train-cancel]')")
    drawn = loss_points(d)
    d.wait(lambda: loss_points(d) > drawn, 300, "the next training step on the chart")
    assert d.js("return window.__trainCancel.isConnected"), "a training step rebuilt the Cancel button"
    d.click("[data-testid=train-cancel]")
    d.wait(lambda: d.exists("[data-testid=train-resume]"), 120, "the run to stop")
    stopped_at = loss_points(d)
    d.click("[data-testid=train-resume]")
    d.wait(lambda: d.exists("[data-testid=wizard-next]"), 600, "the run to finish")
    # The chart shows the whole run, the steps before the resume included: six loss points at least.
    assert loss_points(d) >= max(stopped_at, 6), (stopped_at, loss_points(d))
    d.click("[data-testid=wizard-next]")
    d.wait_text("[data-testid=adapter-dir]", "Adapter saved in")
    global TRAINED_ADAPTER
    TRAINED_ADAPTER = d.text("[data-testid=adapter-dir]").split("Adapter saved in", 1)[1].strip()
    # Answers before and after, side by side, for prompts of the dataset.
    d.wait(lambda: d.exists("[data-testid=samples]") or d.exists("[data-testid=samples-error]"), 600, "the sample answers")
    assert not d.exists("[data-testid=samples-error]"), d.text("[data-testid=samples-error]")
    rows = d.js("return [...document.querySelectorAll('[data-testid=samples] tbody tr')].map(r => [...r.cells].map(c => c.innerText))")
    assert len(rows) == 3, rows
    assert all("quillbury" in r[0].lower() for r in rows), rows
    assert all(r[1].strip() and r[2].strip() for r in rows), rows
    assert any(r[1] != r[2] for r in rows), f"the adapter changed no answer: {rows}"
    shot(d, "train-result.png", "[data-testid=samples]")


def starter_path():
    return os.path.join(MODELS_DIR, STARTER)


def test_plan_the_starter_model(d):
    page(d, "planner")
    d.type("[data-testid=plan-model]", starter_path())
    d.click("[data-testid=plan-go]")
    d.wait_text("[data-testid=plan-verdict]", "Fits", timeout=60)
    assert d.exists("[data-testid=breakdown] rect"), "the breakdown chart has bars"
    assert "base weights" in d.text("[data-testid=breakdown]")
    d.screenshot(os.path.join(SHOTS, "planner.png"))


def test_a_config_that_wont_fit_says_what_to_change(d):
    page(d, "planner")
    d.type("[data-testid=plan-model]", starter_path())
    d.click("[data-testid=plan-gpu] option[value=rtx2080]")
    d.type("[data-testid=plan-context]", "131072")
    d.type("[data-testid=plan-batch]", "512")
    d.click("[data-testid=plan-go]")
    d.wait_text("[data-testid=plan-verdict]", "Does not fit", timeout=60)
    assert d.text("[data-testid=plan-suggestion]").startswith("To make it fit:")
    d.screenshot(os.path.join(SHOTS, "planner-does-not-fit.png"))


def answer_text(d, sel="[data-testid=answer]"):
    return d.js("const a = document.querySelectorAll(arguments[0]); return a.length ? a[a.length - 1].innerText : ''", sel) or ""


def test_chat_streams_an_answer_and_stops(d):
    page(d, "chat")
    d.wait(lambda: starter_path() in d.js("return document.querySelector('[data-testid=chat-model-path]').value"), 10, "the starter model to be picked")
    d.type("[data-testid=chat-input]", "What is the capital of France?")
    d.click("[data-testid=chat-send]")
    # Streamed: text shows up while the answer is still being written.
    d.wait(lambda: d.exists("[data-testid=answer].streaming") and len(answer_text(d)) > 0, 120, "the first streamed tokens")
    d.wait(lambda: not d.exists("[data-testid=answer].streaming"), 300, "the answer to finish")
    assert "tokens/s" in answer_text(d), answer_text(d)
    d.screenshot(os.path.join(SHOTS, "chat.png"))
    # Kept on disk, listed on the side.
    convos = os.path.join(os.environ["QLORA_STUDIO_HOME"], "conversations")
    assert len(os.listdir(convos)) == 1, os.listdir(convos)
    d.find("[data-testid=conversations] a")
    # Stop: a second question, stopped after its first tokens.
    d.type("[data-testid=chat-input]", "Write a long story about a dragon.")
    d.click("[data-testid=chat-send]")
    d.wait(lambda: d.exists("[data-testid=answer].streaming") and len(answer_text(d)) > 0, 120, "the second answer to start")
    d.click("[data-testid=chat-stop]")
    d.wait(lambda: "stopped" in answer_text(d), 60, "the answer to stop")


def answer_body(d, sel):
    """The last answer's text, without its "N tokens · x tokens/s" line."""
    return d.js("const a = document.querySelectorAll(arguments[0]); const e = a[a.length - 1]; return e && e.firstChild && e.firstChild.nodeType === 3 ? e.firstChild.textContent : ''", sel) or ""


def set_value(d, sel, value, event="input"):
    """Sets an input's value as a user would (sliders and the collapsed sampling fields)."""
    d.js("const e = document.querySelector(arguments[0]); e.value = arguments[1]; e.dispatchEvent(new Event(arguments[2], {bubbles: true}))", sel, str(value), event)


def send_and_wait(d, text, sel):
    """Sends `text`; waits for the streamed answer(s) `sel` of this message to finish."""
    before = int(d.js("return document.querySelectorAll(arguments[0]).length", sel))
    d.type("[data-testid=chat-input]", text)
    d.click("[data-testid=chat-send]")
    d.wait(lambda: int(d.js("return document.querySelectorAll(arguments[0]).length", sel)) > before and len(answer_text(d, sel)) > 0, 120, f"streamed tokens in {sel}")
    d.wait(lambda: not d.exists("[data-testid^=answer].streaming") and not d.js("return document.querySelector('[data-testid=chat-send]').disabled"), 300, "the answers to finish")
    assert not d.exists("[data-testid=chat-error]"), d.text("[data-testid=chat-error]")
    return answer_text(d, sel)


def test_chat_with_the_adapter(d):
    assert TRAINED_ADAPTER, "no trained adapter: run test_train_a_few_steps_with_the_demo_config first"
    assert os.path.isfile(os.path.join(TRAINED_ADAPTER, "adapter_config.json")), TRAINED_ADAPTER
    page(d, "chat")
    d.wait(lambda: starter_path() in d.js("return document.querySelector('[data-testid=chat-model-path]').value"), 10, "the starter model to be picked")
    d.click("[data-testid=chat-new]")
    # Greedy and short, so base answers can be compared.
    set_value(d, "[data-testid=temperature]", 0)
    set_value(d, "[data-testid=max-new-tokens]", 16)
    # An adapter made for another base: a clear message naming the modules, nothing attached.
    d.type("[data-testid=chat-adapter]", os.path.abspath(OTHER_BASE_ADAPTER))
    d.click("[data-testid=adapter-attach]")
    d.wait_text("[data-testid=chat-error]", "does not fit this model", timeout=120)
    assert "proj" in d.text("[data-testid=chat-error]"), d.text("[data-testid=chat-error]")
    assert "No adapter attached" in d.text("[data-testid=adapter-status]")
    shot(d, "chat-adapter-wrong-base.png", "[data-testid=chat-error]")
    # The adapter trained on the Train page: attached to the loaded model.
    d.type("[data-testid=chat-adapter]", TRAINED_ADAPTER)
    d.click("[data-testid=adapter-attach]")
    d.wait_text("[data-testid=adapter-status]", "Attached demo-run/adapter: r=", timeout=120)
    assert not d.exists("[data-testid=chat-error]")
    tuned = send_and_wait(d, "What is the capital of France?", "[data-testid=answer-adapter]")
    assert "tokens/s" in tuned, tuned
    shot(d, "chat-adapter.png")
    # Scale 0: the base model's answer, nothing reloaded; then back to 1. (New chats, so both
    # compared answers see the same prompt.)
    d.click("[data-testid=chat-new]")
    set_value(d, "[data-testid=adapter-scale]", 0)
    assert d.text("[data-testid=adapter-scale-label]") == "0.00 (base)"
    at_zero = send_and_wait(d, "What is the capital of France?", "[data-testid=answer-adapter]")
    at_zero_body = answer_body(d, "[data-testid=answer-adapter]")
    assert at_zero_body, at_zero
    set_value(d, "[data-testid=adapter-scale]", 1)
    assert d.text("[data-testid=adapter-scale-label]") == "1.00"
    # Side by side: the base, then the adapter, on the same prompt; the base's answer is the
    # one the adapter gave at scale 0.
    d.click("[data-testid=chat-new]")
    d.click("[data-testid=side-by-side]")
    send_and_wait(d, "What is the capital of France?", "[data-testid=answer-adapter]")
    base = answer_text(d, "[data-testid=answer]")
    assert d.exists(".side-by-side [data-testid=answer]") and d.exists(".side-by-side [data-testid=answer-adapter]")
    assert answer_body(d, "[data-testid=answer]") == at_zero_body, (at_zero, base)
    shot(d, "chat-side-by-side.png", ".side-by-side")
    d.click("[data-testid=side-by-side]")
    d.click("[data-testid=adapter-detach]")
    d.wait_text("[data-testid=adapter-status]", "detached", timeout=30)


SMOLLM2_CARD = """---
library_name: transformers
license: apache-2.0
language:
- en
pipeline_tag: text-generation
tags:
- safetensors
- onnx
- transformers.js
base_model:
- HuggingFaceTB/SmolLM2-135M
---


# SmolLM2

![image/png](https://cdn-uploads.huggingface.co/production/uploads/61c141342aac764ce1654e43/y45hIMNREW7w_XpHYB_0q.png)

##  Table of Contents

1. [Model Summary](##model-summary)

## Model Summary

SmolLM2 is a family of compact language models available in three size: 135M, 360M, and 1.7B parameters. They are capable of solving a wide range of tasks while being lightweight enough to run on-device.

SmolLM2 demonstrates significant advances over its predecessor SmolLM1.
"""


class LocalHub:
    """The hub engineer's qlora-hub-testserver serving a copy (symlinks) of the test model as
    HuggingFaceTB/SmolLM2-135M-Instruct; throttled (about 1 MB/s: the server's throttle sends
    one 64 KiB chunk a tick) while a download is watched, cancelled and cut off, then served at
    full speed. It stops and starts again on the same port: the network going away and back."""

    REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="qlora-e2e-hub-")
        repo = os.path.join(self.root, self.REPO)
        os.makedirs(repo)
        for f in os.listdir(starter_path()):
            os.symlink(os.path.join(starter_path(), f), os.path.join(repo, f))
        # The model card and counters the Hub shows for it (from the real card's front matter).
        with open(os.path.join(repo, "README.md"), "w") as f:
            f.write(SMOLLM2_CARD)
        os.makedirs(os.path.join(repo, ".hub"))
        with open(os.path.join(repo, ".hub", "config.json"), "w") as f:
            f.write('{"downloads": 812345, "likes": 640}')
        # A second, less downloaded repository, so a search lists more than one model.
        other = os.path.join(self.root, "HuggingFaceTB", "SmolLM2-135M-Instruct-ONNX")
        os.makedirs(os.path.join(other, ".hub"))
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
            os.symlink(os.path.join(starter_path(), f), os.path.join(other, f))
        with open(os.path.join(other, ".hub", "config.json"), "w") as f:
            f.write('{"downloads": 2300, "likes": 12}')
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = None

    def start(self, throttle=None):
        args = [os.environ["QLORA_HUB_TESTSERVER"], "--root", self.root, "--port", str(self.port)]
        if throttle:
            args += ["--throttle", str(throttle)]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("http://127.0.0.1:"), f"test server printed {self.url!r}"
        return self

    def stop(self):
        if self.proc:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


HUB = None


def download_status(d):
    return d.js("const e = document.querySelector(arguments[0] + ' [data-testid=download-status]'); return e ? e.innerText : ''",
                f"[data-testid='model-{LocalHub.REPO}']") or ""


def test_download_with_cancel_resume_and_the_network_going_away(d):
    global HUB
    HUB = LocalHub().start(throttle=1_000_000)
    page(d, "settings")
    d.type("[data-testid=endpoint]", HUB.url)
    d.click("[data-testid=settings-save]")
    d.find("[data-testid=settings-saved]")
    page(d, "models")
    card = f"[data-testid='model-{LocalHub.REPO}']"
    # A model id that does not exist: a clear message, and the page stays usable.
    d.type("[data-testid=search]", "nobody/no-such-model")
    d.click("[data-testid=search-go]")
    d.click("[data-testid='model-nobody/no-such-model'] [data-testid=check-fit]")
    d.wait_text("[data-testid='model-nobody/no-such-model'] [data-testid=plan-error]", "not found", timeout=30)
    shot(d, "models-unknown-id.png", "[data-testid='model-nobody/no-such-model']")
    # Download, cancel.
    d.click(f"{card} [data-testid=download]")
    # Progress with a speed and a time left.
    d.wait(lambda: download_status(d).startswith("running") and "B/s" in download_status(d) and "ETA –" not in download_status(d),
           30, "download progress with speed and ETA")
    shot(d, "models-downloading.png", card)
    # Progress redraws the numbers, not the buttons: a Cancel rebuilt between a click's press
    # and release gets no click (this once ate the test's click).
    before = d.js("window.__cancel = document.querySelector(arguments[0]); return window.__cancel.isConnected",
                  f"{card} [data-testid=download-cancel]")
    assert before, "the Cancel button is on the page"
    shown = download_status(d)
    d.wait(lambda: download_status(d) != shown, 15, "the next progress event")
    assert d.js("return window.__cancel.isConnected"), "a progress event rebuilt the Cancel button"
    d.click(f"{card} [data-testid=download-cancel]")
    d.wait(lambda: download_status(d).startswith("cancelled"), 15, "the download to cancel")
    cancelled_at = download_status(d)
    # Resume, then the network goes away mid-download.
    d.click(f"{card} [data-testid=download-resume]")
    d.wait(lambda: download_status(d).startswith("running"), 15, "the download to resume")
    HUB.stop()
    d.wait(lambda: download_status(d).startswith("failed"), 60, "the download to fail without the network")
    msg = d.text(f"{card} [data-testid=download-error]")
    assert "offline" in msg.lower() or "cannot reach" in msg or "failed after" in msg, msg
    shot(d, "models-network-gone.png", f"{card} [data-testid=download-error]")
    page(d, "system")  # still usable
    page(d, "models")
    # The network is back: resume to the end.
    HUB.start()
    d.click(f"{card} [data-testid=download-resume]")
    d.wait(lambda: d.exists(f"{card} [data-testid=downloaded]"), 120, "the download to finish")
    assert "100.0%" in download_status(d), (cancelled_at, download_status(d))
    shot(d, "models-downloaded.png", card)


def test_search_the_hub_and_read_a_models_details(d):
    assert HUB, "the local Hub starts in test_download_with_cancel_resume_and_the_network_going_away"
    page(d, "models")
    d.type("[data-testid=search]", "smollm2")
    d.click("[data-testid=search-go]")
    hits = "[data-testid=search-results] .card"
    d.wait(lambda: len(d.find_all(hits)) == 2, 30, "two search results")
    ids = d.js("return [...document.querySelectorAll(arguments[0])].map(c => c.dataset.testid)", hits)
    assert ids == [f"model-{LocalHub.REPO}", "model-HuggingFaceTB/SmolLM2-135M-Instruct-ONNX"], ids  # most downloaded first
    card = f"[data-testid=search-results] [data-testid='model-{LocalHub.REPO}']"
    assert "812.3k downloads · 640 likes · text-generation" in d.text(card), d.text(card)
    shot(d, "models-search.png", "[data-testid=search-results]")
    d.click(f"{card} [data-testid=details]")
    d.wait_text(f"{card} [data-testid=detail-summary]", "SmolLM2 is a family of compact language models", timeout=30)
    facts = d.text(f"{card} [data-testid=detail-facts]")
    assert "licence apache-2.0" in facts and "in the cache" in facts, facts
    files = d.text(f"{card} [data-testid=detail-files]")
    assert "model.safetensors" in files and "README.md" in files and "skipped" in files, files
    d.wait_text(f"{card} [data-testid=detail-fit]", "fits", timeout=60)
    shot(d, "models-details.png", f"{card} [data-testid=model-detail]")
    # A model id that does not exist, through the details: a clear message.
    d.type("[data-testid=search]", "nobody/no-such-model")
    d.click("[data-testid=search-go]")
    d.click("[data-testid=search-results] [data-testid=details]")
    d.wait_text("[data-testid=search-results] [data-testid=details-error]", "nobody/no-such-model was not found", timeout=30)
    # Offline: a search says it needs the network; a cached model's details come from the cache.
    set_offline(d, True)
    page(d, "models")
    d.type("[data-testid=search]", "smollm2")
    d.click("[data-testid=search-go]")
    d.wait_text("[data-testid=search-error]", "offline mode is on: searching the Hub needs the network", timeout=30)
    curated = f"[data-testid=curated] [data-testid='model-{LocalHub.REPO}']"
    d.click(f"{curated} [data-testid=details]")
    d.wait_text(f"{curated} [data-testid=detail-facts]", "offline: read from the cache", timeout=30)
    assert "model.safetensors" in d.text(f"{curated} [data-testid=detail-files]")
    # The planner's verdict, from the cached copy.
    d.wait_text(f"{curated} [data-testid=detail-fit]", "fits", timeout=60)
    shot(d, "models-offline-details.png", f"{curated} [data-testid=model-detail]")
    set_offline(d, False)


def set_offline(d, on):
    page(d, "settings")
    if d.js("return document.querySelector('[data-testid=offline]').checked") != on:
        d.click("[data-testid=offline]")
    d.click("[data-testid=settings-save]")
    d.find("[data-testid=settings-saved]")


def test_chat_with_the_downloaded_model(d):
    page(d, "models")
    card = f"[data-testid='model-{LocalHub.REPO}']"
    d.click(f"{card} [data-testid=chat-downloaded]")
    d.wait(lambda: "/snapshots/" in d.js("return document.querySelector('[data-testid=chat-model-path]').value"), 10, "the snapshot to be picked")
    d.type("[data-testid=chat-input]", "Say hello.")
    d.click("[data-testid=chat-send]")
    d.wait(lambda: len(answer_text(d)) > 0, 120, "streamed tokens")
    d.wait(lambda: not d.exists("[data-testid=answer].streaming"), 300, "the answer to finish")


def test_import_a_gguf_and_chat_with_it(d):
    page(d, "models")
    # Not a file: a clear message naming it.
    d.type("[data-testid=gguf-path]", "/no/such/model.gguf")
    d.click("[data-testid=gguf-import]")
    d.wait_text("[data-testid=gguf-error]", "/no/such/model.gguf", timeout=30)
    assert "is not a file" in d.text("[data-testid=gguf-error]")
    # A SentencePiece GGUF as llama.cpp writes TinyLlama (tests/fixtures/gguf_spm).
    gguf = os.path.join(REPO, "tests", "fixtures", "gguf_spm", "tiny-llama-spm.gguf")
    d.type("[data-testid=gguf-path]", gguf)
    d.click("[data-testid=gguf-import]")
    d.wait_text("[data-testid=gguf-imported]", "Imported tiny-llama-spm", timeout=120)
    card = "[data-testid='local-tiny-llama-spm']"
    d.find(f"{card} [data-testid=ready]", timeout=15)
    shot(d, "models-import-gguf.png", card)
    # Once: importing it again says where it already is.
    d.click("[data-testid=gguf-import]")
    d.wait_text("[data-testid=gguf-error]", "already imported", timeout=30)
    # Ready for chat: its own chat template and tokenizer, streamed.
    d.click(f"{card} [data-testid=chat-local]")
    d.wait(lambda: "tiny-llama-spm" in d.js("return document.querySelector('[data-testid=chat-model-path]').value"), 10, "the imported model to be picked")
    send_and_wait(d, "Hello there.", "[data-testid=answer]")
    assert "tokens/s" in answer_text(d), answer_text(d)
    # Imported models can be deleted from the app, in two clicks; the starter model cannot.
    page(d, "models")
    assert not d.exists("[data-testid='local-SmolLM2-135M-Instruct'] [data-testid=delete-local]")
    d.click(f"{card} [data-testid=delete-local]")
    d.click(f"{card} [data-testid=delete-local-confirm]")
    d.wait(lambda: not d.exists(card), 15, "the imported model to leave the list")
    assert not os.path.exists(os.path.join(os.environ["QLORA_STUDIO_HOME"], "models", "tiny-llama-spm"))


def test_library_lists_verifies_and_dry_runs_a_delete(d):
    page(d, "library")
    row = f"[data-testid='repo-{LocalHub.REPO}']"
    d.find(row, timeout=15)
    d.click(f"{row} [data-testid=verify]")
    d.wait_text("[data-testid=cache-report]", "checked", timeout=120)
    d.click(f"{row} [data-testid=delete]")
    d.wait_text("[data-testid=cache-report]", "Dry run: would free", timeout=30)
    shot(d, "library.png")
    assert d.exists(row), "a dry run deletes nothing"


TESTS = [v for k, v in list(globals().items()) if k.startswith("test_")]


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    only = sys.argv[1:]
    d = Driver(f"http://127.0.0.1:{os.environ.get('TAURI_DRIVER_PORT', '4444')}")
    t0 = time.monotonic()
    d.start(APP)
    failed = []
    try:
        d.wait(lambda: d.js("return document.body.dataset.ready") == "true", 30, "the app to be ready")
        print(f"app ready in {time.monotonic() - t0:.2f}s (session start included)")
        for test in TESTS:
            if only and test.__name__ not in only:
                continue
            t = time.monotonic()
            try:
                test(d)
                print(f"ok    {test.__name__} ({time.monotonic() - t:.1f}s)")
            except Exception:
                failed.append(test.__name__)
                print(f"FAIL  {test.__name__}\n{traceback.format_exc()}")
                try:
                    d.screenshot(os.path.join(ARTIFACTS, f"failed-{test.__name__}.png"))
                except Exception:
                    pass
    finally:
        d.quit()
        if HUB:
            HUB.stop()
    print(f"{len(failed)} failed: {failed}" if failed else "all end-to-end tests passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
