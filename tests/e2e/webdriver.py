"""A small W3C WebDriver client (standard library only) for driving the app through
tauri-driver -> WebKitWebDriver. Every request has a timeout, so a hung app fails the test
instead of hanging it."""

import base64
import http.client
import json
import time
import urllib.error
import urllib.request

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class WebDriverError(Exception):
    pass


class Driver:
    def __init__(self, url="http://127.0.0.1:4444", timeout=60):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = None

    def _req(self, method, path, body=None, timeout=None):
        # tauri-driver reuses kept-alive connections to WebKitWebDriver, which sometimes has
        # closed them: the request then comes back as a reset before WebKitWebDriver saw it
        # (tauri-driver logs "connection error"). Such a request is sent again, once.
        try:
            return self._req_once(method, path, body, timeout)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            time.sleep(0.2)
            return self._req_once(method, path, body, timeout)

    def _req_once(self, method, path, body=None, timeout=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                return json.loads(r.read() or b"{}").get("value")
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            raise WebDriverError(f"{method} {path}: HTTP {e.code}: {detail[:500]}") from None

    def _s(self, path, method="POST", body=None, timeout=None):
        return self._req(method, f"/session/{self.session}{path}", body if method == "POST" else None, timeout)

    def start(self, application, args=()):
        caps = {"capabilities": {"alwaysMatch": {"tauri:options": {"application": application, "args": list(args)}}}}
        value = self._req("POST", "/session", caps, timeout=90)
        self.session = value["sessionId"]
        return self

    def quit(self):
        if self.session:
            try:
                self._req("DELETE", f"/session/{self.session}", timeout=20)
            finally:
                self.session = None

    # elements
    def find_all(self, css, within=None):
        path = f"/element/{within}/elements" if within else "/elements"
        return [e[ELEMENT] for e in self._s(path, body={"using": "css selector", "value": css})]

    def find(self, css, timeout=10):
        return self.wait(lambda: (self.find_all(css) or [None])[0], timeout, f"an element matching {css!r}")

    def click(self, css, timeout=10):
        # A live view (download progress) redraws its buttons: a button found a moment ago may
        # be gone; find it again.
        for _ in range(20):
            el = self.find(css, timeout)
            try:
                self._s(f"/element/{el}/click", body={})
                return el
            except WebDriverError as e:
                if "stale element" not in str(e):
                    raise
        raise WebDriverError(f"{css!r} kept going stale")

    def type(self, css, text, clear=True):
        el = self.find(css)
        if clear:
            self._s(f"/element/{el}/clear", body={})
        if text:
            self._s(f"/element/{el}/value", body={"text": text})
        return el

    def text(self, css, timeout=10):
        return self._s(f"/element/{self.find(css, timeout)}/text", method="GET")

    def js(self, script, *args):
        return self._s("/execute/sync", body={"script": script, "args": list(args)})

    def exists(self, css):
        return bool(self.find_all(css))

    def wait(self, fn, timeout, what):
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            try:
                v = fn()
                if v:
                    return v
            except WebDriverError as e:
                last = e
            time.sleep(0.1)
        raise TimeoutError(f"waited {timeout}s for {what}" + (f" (last error: {last})" if last else ""))

    def wait_text(self, css, contains, timeout=10):
        return self.wait(lambda: contains in (self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css) or ""),
            timeout, f"{css!r} to contain {contains!r}")

    def screenshot(self, path):
        png = base64.b64decode(self._s("/screenshot", method="GET"))
        with open(path, "wb") as f:
            f.write(png)
        return path
