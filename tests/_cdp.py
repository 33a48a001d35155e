"""A small headless-Chromium driver for the page tests: the Chrome DevTools Protocol over
`--remote-debugging-pipe` (JSON messages ended by NUL on file descriptors 3 and 4), so it needs
nothing but the `chromium` binary (Debian package `chromium`): no websocket library, no driver.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import threading
import time

BINARIES = ("chromium", "chromium-browser", "google-chrome", "chrome")


class BrowserUnavailable(RuntimeError):
    """No Chromium binary, or it did not start."""


class Browser:
    def __init__(self, proc, write_fd, read_fd):
        self.proc, self._w, self._r = proc, write_fd, read_fd
        self._ids = itertools.count(1)
        self._replies: dict[int, dict] = {}
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    @classmethod
    def start(cls, tmp_dir) -> Browser:
        binary = next((b for b in map(shutil.which, BINARIES) if b), None)
        if binary is None:
            raise BrowserUnavailable("no chromium binary on PATH (Debian: apt-get install chromium)")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()

        def fds():  # the child reads commands on fd 3 and writes replies on fd 4
            # moved above 100 first: either pipe end may itself be fd 3 or 4
            r, w = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 100), fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 100)
            os.dup2(r, 3)
            os.dup2(w, 4)

        args = [binary, "--headless=new", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
                "--disable-dev-shm-usage", "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_dir}/chromium",
                "about:blank"]
        try:
            log = open(f"{tmp_dir}/chromium.log", "wb")  # noqa: SIM115 - the child writes it; closed below
            # preexec_fn only moves two descriptors (dup2) in the child
            proc = subprocess.Popen(args, preexec_fn=fds, close_fds=False, stdout=log, stderr=log)  # noqa: PLW1509
            log.close()
        except OSError as e:
            raise BrowserUnavailable(f"{binary} did not start: {e}") from e
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        browser = cls(proc, to_chrome_w, from_chrome_r)
        try:
            browser.call("Browser.getVersion", timeout=30)
        except Exception as e:
            browser.close()
            tail = open(f"{tmp_dir}/chromium.log", errors="replace").read()[-300:].strip()  # noqa: SIM115
            raise BrowserUnavailable(f"{binary} did not answer on the DevTools pipe: {e}; {tail}") from e
        return browser

    def _read(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._r, 1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                with self._cv:
                    self._replies[-1] = {"error": "browser closed the pipe"}
                    self._cv.notify_all()
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                msg = json.loads(m)
                if "id" in msg:
                    with self._cv:
                        self._replies[msg["id"]] = msg
                        self._cv.notify_all()

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        i = next(self._ids)
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        with self._cv:
            while i not in self._replies:
                if -1 in self._replies or time.time() > deadline:
                    raise RuntimeError(f"{method}: no reply ({self._replies.get(-1, {}).get('error', 'timeout')})")
                self._cv.wait(0.1)
            reply = self._replies.pop(i)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def open(self, url: str, width: int = 1400, height: int = 1500) -> Tab:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tab = Tab(self, session, target)
        tab.call("Page.enable")
        tab.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                       "mobile": False})
        tab.call("Page.navigate", {"url": url})
        return tab

    def close(self):
        try:
            self.proc.terminate()
            self.proc.wait(10)
        except Exception:  # noqa: BLE001
            self.proc.kill()
        for fd in (self._w, self._r):
            try:
                os.close(fd)
            except OSError:
                pass


class Tab:
    def __init__(self, browser: Browser, session: str, target: str):
        self.browser, self.session, self.target = browser, session, target

    def close(self):
        self.browser.call("Target.closeTarget", {"targetId": self.target})

    def call(self, method, params=None, timeout=30):
        return self.browser.call(method, params, self.session, timeout)

    def eval(self, expression: str):
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails'].get('text')}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.eval(expression):
                    return
            except RuntimeError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"not true after {timeout}s: {expression}")

    def click(self, selector: str):
        self.eval(f"document.querySelector({json.dumps(selector)}).click()")

    def upload(self, selector: str, path: str):
        root = self.call("DOM.getDocument", {"depth": -1, "pierce": True})["root"]["nodeId"]
        node = self.call("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        if not node:
            raise RuntimeError(f"no element {selector}")
        self.call("DOM.setFileInputFiles", {"files": [path], "nodeId": node})

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})["data"])
