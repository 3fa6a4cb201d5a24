"""The page at ``GET /``: a real uvicorn server on loopback and a real tiny run, driven by Debian's
headless Chromium (``/usr/bin/chromium``) through Playwright's Python package (no browser download).

Outside CI the browser tests skip, saying why, when ``/usr/bin/chromium`` is absent; in CI
(``CI=true``, where ``.ci/run`` installs it) they fail instead.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from fdkd.serving.middleware import EXEMPT
from fdkd.serving.wav import read_wav, write_wav
from fdkd.serving.webpage import PUBLIC_PATHS
from tests.dataset_arrays import builtin
from tests.serving_helpers import failed_gate_copy, running_server

# the graph the served run serves: student.onnx, or an INT8 graph where the tiny run's passed its gate on this CPU
# (which one moves with the tiny student's training threads; what matters here is that the page shows it)
SERVED_GRAPH = re.compile(r"student\.(?:[\w-]+\.)*onnx")

CHROMIUM = Path("/usr/bin/chromium")
KEY = "s3cret-page"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        # the microphone: Chromium's fake capture device (a beep), granted without a prompt
        "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]


def _test_clip(tiny_dataset, k: int = 0) -> bytes:
    z = builtin(tiny_dataset.path)
    row = np.flatnonzero(z["split"] == 2)[k]
    return write_wav(z["audio_raw"][row].astype(np.float32) / 32768.0, 16000)


@pytest.fixture(scope="module")
def keyed_server(served_run):
    with running_server(served_run, api_key=KEY) as (url, _):
        yield url


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is absent (apt-get install -y --no-install-recommends chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the page test, but {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright  # the dev extra's; never `playwright install`

    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM), headless=True,
            args=ARGS, viewport={"width": 900, "height": 1000})
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()  # a new tab: its own, empty sessionStorage
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    page.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _capture_classify_bodies(page) -> list[bytes]:
    """The bodies the page POSTs to /v1/classify, as sent (intercepted, then passed on unchanged)."""
    bodies: list[bytes] = []

    def handler(route):
        bodies.append(route.request.post_data_buffer)
        route.continue_()

    page.route("**/v1/classify", handler)
    return bodies


def _use_key(page, key: str) -> None:
    page.fill("#api-key", key)
    page.click("#key-save")


def test_page_and_its_files_are_public_but_its_calls_need_the_key(keyed_server):
    assert PUBLIC_PATHS <= EXEMPT, "every file of the page must be exempt from the API key"
    r = httpx.get(f"{keyed_server}/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for src in re.findall(r'(?:src|href)="(ui/[^"]+)"', r.text):  # every file the HTML loads is served, no key
        assert httpx.get(f"{keyed_server}/{src}").status_code == 200, src
    assert "http" not in "".join(re.findall(r'(?:src|href)="([^"]+)"', r.text)), "no CDN"
    assert httpx.get(f"{keyed_server}/v1/model").status_code == 401
    info = httpx.get(f"{keyed_server}/v1/model", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert info["name"] == "served" and info["modality"] == "audio" and len(info["class_names"]) == 10
    assert info["preprocessing"]["sample_rate"] == 16000


def test_upload_shows_what_the_api_returns_and_401_is_explained(keyed_server, page, tiny_dataset, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{keyed_server}/")
    status = page.locator("#status")
    expect(status).to_contain_text("401: this server needs an API key")
    page.screenshot(path=str(tmp_path / "page-401.png"), full_page=True)
    _use_key(page, "wrong-key")
    expect(status).to_contain_text("401: the server rejected this API key")
    wav = tmp_path / "clip.wav"
    wav.write_bytes(_test_clip(tiny_dataset))
    page.set_input_files("#file", str(wav))  # a classify attempt with the wrong key: still a clear 401
    expect(status).to_contain_text("401: the server rejected this API key")
    expect(page.locator("#result")).to_be_hidden()

    _use_key(page, KEY)
    expect(page.locator("#model-line")).to_contain_text(SERVED_GRAPH)
    expect(status).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('fdkd.apiKey')") == KEY
    page.set_input_files("#file", str(wav))
    expect(page.locator("#result")).to_be_visible()

    api = httpx.post(f"{keyed_server}/v1/classify", content=wav.read_bytes(),
                     headers={"X-API-Key": KEY, "content-type": "audio/wav"}).json()
    assert page.inner_text("#pred-class") == api["class_name"]
    assert page.inner_text("#meta-model") == api["model"] == "served"
    assert page.inner_text("#meta-artifact") == api["artifact"]
    assert "sent as uploaded" in page.inner_text("#meta-input")
    assert re.fullmatch(r"latency \d+\.\d ms \(round trip\)", page.inner_text("#latency"))
    bars = page.locator(".bar-row")
    shown = {bars.nth(i).get_attribute("data-class-name"): float(bars.nth(i).get_attribute("data-probability"))
             for i in range(bars.count())}
    assert shown == pytest.approx(api["probabilities"], abs=1e-9)
    assert page.locator(".bar-row.best").get_attribute("data-class-name") == api["class_name"]
    shot = tmp_path / "page-result.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_dropped_wav_at_another_rate_is_resampled_in_the_browser(keyed_server, page, tmp_path):
    from playwright.sync_api import expect

    t = np.arange(8000) / 8000
    wav8k = write_wav((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000)
    raw = httpx.post(f"{keyed_server}/v1/classify", content=wav8k, headers={"X-API-Key": KEY})
    assert raw.status_code == 200, raw.text  # the API resamples it too (the training data's polyphase filter)

    page.goto(f"{keyed_server}/")
    _use_key(page, KEY)
    expect(page.locator("#model-line")).to_contain_text(SERVED_GRAPH)
    transfer = page.evaluate_handle(
        """b64 => { const dt = new DataTransfer();
                    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    dt.items.add(new File([bytes], "tone-8k.wav", {type: "audio/wav"})); return dt; }""",
        base64.b64encode(wav8k).decode())
    bodies = _capture_classify_bodies(page)
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    expect(page.locator("#result")).to_be_visible()
    assert "converted in the browser to 16 kHz mono WAV" in page.inner_text("#meta-input")
    assert page.locator(".bar-row").count() == 10
    [sent] = bodies  # what the page sent: a WAV the API takes
    w = read_wav(sent)
    assert (w.sample_rate, w.channels, w.format) == (16000, 1, "float32") and len(w.samples) == 16000
    api = httpx.post(f"{keyed_server}/v1/classify", content=sent, headers={"X-API-Key": KEY})
    assert api.status_code == 200 and api.json()["class_name"] == page.inner_text("#pred-class")


def test_microphone_recording_is_sent_as_a_16k_mono_wav(keyed_server, page, tmp_path):
    from playwright.sync_api import expect

    page.goto(f"{keyed_server}/")
    _use_key(page, KEY)
    record = page.locator("#record")
    expect(record).to_be_visible()
    bodies = _capture_classify_bodies(page)
    record.click()
    expect(page.locator("#result")).to_be_visible()
    assert "the recording" in page.inner_text("#meta-input")
    [sent] = bodies
    w = read_wav(sent)
    assert (w.sample_rate, w.channels, len(w.samples)) == (16000, 1, 16000)
    assert float(np.abs(w.samples).max()) > 0.01, "the fake microphone's beep was recorded"
    page.screenshot(path=str(tmp_path / "page-recording.png"), full_page=True)


def test_page_warns_when_the_server_serves_an_unvalidated_artifact(served_run, page, tmp_path):
    run_dir = failed_gate_copy(served_run, tmp_path)
    with running_server(run_dir, allow_unvalidated=True) as (url, _):
        page.goto(f"{url}/")
        banner = page.locator("#unvalidated")
        banner.wait_for(state="visible")
        assert "did NOT pass validation" in banner.inner_text()
        assert "failed its validation gate" in banner.inner_text()
    with running_server(served_run) as (url, _):
        page.goto(f"{url}/")
        # polled from Playwright's isolated world: a string predicate (wait_for_function) is evaluated in the page,
        # whose CSP (script-src 'self', no 'unsafe-eval') refuses it whenever the first check comes too early
        from playwright.sync_api import expect

        expect(page.locator("#model-line")).to_have_text(re.compile(r"^model "), timeout=20_000)
        assert page.locator("#unvalidated").is_hidden()
