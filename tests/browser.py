"""Open a page in headless Chromium over the DevTools protocol: its console errors, what its plots measure on
screen, and a screenshot.

    python tests/browser.py runs/demo/report.html report.png [HEIGHT]   # the README's screenshot is made so
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Every <svg>: its drawn size, and how many shapes it holds (an empty plot has an axis frame and little else).
PLOTS = """JSON.stringify([...document.querySelectorAll('figure svg')].map(s => {
  const r = s.getBoundingClientRect();
  return {width: r.width, height: r.height, shapes: s.querySelectorAll('path, use, line, polyline').length};
}))"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@dataclass
class PageCheck:
    errors: list[str] = field(default_factory=list)  # console errors and uncaught exceptions
    plots: list[dict] = field(default_factory=list)
    screenshot: bytes = b""


class DevTools:
    """A headless Chromium and one DevTools websocket to its first tab."""

    def __init__(self, width: int = 1280, height: int = 2000):
        from websockets.sync.client import connect

        self.profile = tempfile.mkdtemp(prefix="thinktune-chromium-")
        self.process = subprocess.Popen(
            [
                chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--no-first-run", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        browser_url = self._listening_url()
        port = re.search(r":(\d+)/", browser_url).group(1)
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost, never via a proxy
        tabs = json.loads(no_proxy.open(f"http://127.0.0.1:{port}/json/list", timeout=30).read())
        page = next(t for t in tabs if t["type"] == "page")
        self.closing = contextlib.ExitStack()
        self.socket = self.closing.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None))
        self.next_id = 0
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def _listening_url(self, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if "DevTools listening on" in line:
                return line.split("on", 1)[1].strip()
        raise RuntimeError("Chromium did not start its DevTools endpoint")

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, event: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == event for e in self.events):
            self.events.append(json.loads(self.socket.recv(timeout=max(0.1, deadline - time.monotonic()))))

    def check(self, page: Path, max_height: int = 4000) -> PageCheck:
        self.events.clear()
        self.call("Page.navigate", url=page.resolve().as_uri())
        self.wait_for("Page.loadEventFired")
        plots = json.loads(self.call("Runtime.evaluate", expression=PLOTS, returnByValue=True)["result"]["value"])
        height = self.call("Runtime.evaluate", expression="document.body.scrollHeight", returnByValue=True)
        self.call("Emulation.setDeviceMetricsOverride", width=1280, height=min(max_height, height["result"]["value"]),
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        shot = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return PageCheck(errors=self._errors(), plots=plots, screenshot=shot)

    def _errors(self) -> list[str]:
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                errors.append(params["exceptionDetails"].get("text", "exception"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                errors.append(params["entry"].get("text", ""))
        return errors

    def close(self) -> None:
        self.closing.close()
        self.process.kill()
        self.process.wait()
        shutil.rmtree(self.profile, ignore_errors=True)


if __name__ == "__main__":
    browser = DevTools()
    try:
        result = browser.check(Path(sys.argv[1]), *(int(a) for a in sys.argv[3:]))
    finally:
        browser.close()
    Path(sys.argv[2]).write_bytes(result.screenshot)
    print(f"{len(result.plots)} plots, {len(result.errors)} console errors; screenshot {sys.argv[2]}")
