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
import sys
import time
import traceback

from webdriver import Driver

APP = os.environ["QLORA_APP"]
SHOTS = os.environ.get("SCREENSHOTS", "docs/screenshots")
ARTIFACTS = os.environ.get("E2E_ARTIFACTS", "/tmp/qlora-e2e")
MODELS_DIR = os.environ["QLORA_STUDIO_LOCAL_MODELS"]
STARTER = "SmolLM2-135M-Instruct"
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


def test_train_wizard_refuses_a_file_that_is_not_a_dataset(d):
    page(d, "train")
    d.type("[data-testid=train-base]", os.path.join(MODELS_DIR, STARTER))
    d.click("[data-testid=wizard-next]")
    d.type("[data-testid=train-dataset]", "/nonexistent/data.jsonl")
    d.click("[data-testid=dataset-preview-go]")
    d.wait_text("[data-testid=dataset-error]", "dataset file '/nonexistent/data.jsonl' does not exist")


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
    print(f"{len(failed)} failed: {failed}" if failed else "all end-to-end tests passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
