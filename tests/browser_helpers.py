"""Headless Chromium (the Debian package) driven over the DevTools protocol, for tests.

Chromium writes the port it picked into ``DevToolsActivePort``; we talk to the page
target over a websocket: navigate, wait for the load event, evaluate JavaScript in the
page, take screenshots, and collect console errors and uncaught exceptions.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

__all__ = ["find_chromium", "Browser", "artifacts_dir"]

_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str:
    """The browser's path; skip the test if there is none, fail if CI requires one."""
    for name in _NAMES:
        path = shutil.which(name)
        if path:
            return path
    message = "headless Chromium not found (apt-get install -y chromium)"
    if os.environ.get("KVOPT_REQUIRE_BROWSER") == "1":
        pytest.fail(message + " and KVOPT_REQUIRE_BROWSER=1")
    pytest.skip(message)


def artifacts_dir(tmp_path: Path) -> Path:
    """Where screenshots go: $KVOPT_TEST_ARTIFACTS if set (CI keeps it), else the test's tmp_path."""
    root = os.environ.get("KVOPT_TEST_ARTIFACTS")
    folder = Path(root) if root else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Browser:
    """One headless Chromium with one page."""

    def __init__(self, profile_dir: Path, width: int = 1280, height: int = 1600) -> None:
        import websocket  # test-only dependency (pyproject: test extra)

        self.proc = subprocess.Popen(
            [
                find_chromium(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile_dir}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not start its DevTools server within 60 s")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.loads(response.read()) if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        self._id = 0
        self.events: list[dict[str, Any]] = []
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a DevTools method and return its result; events seen meanwhile are kept."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def _wait_event(self, method: str, timeout: float) -> None:
        if any(e.get("method") == method for e in self.events):  # came in with a reply
            return
        deadline = time.monotonic() + timeout
        self.ws.settimeout(timeout)
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == method:
                return
        raise TimeoutError(f"no {method} within {timeout} s")

    def open(self, url: str, timeout: float = 60) -> None:
        self.events.clear()
        self.send("Page.navigate", url=url)
        self._wait_event("Page.loadEventFired", timeout)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """Poll a JavaScript expression until it is truthy (an SPA renders after load)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        raise TimeoutError(f"{expression!r} stayed falsy for {timeout} s")

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions and error log entries since the last open()."""
        out = []
        for e in self.events:
            method, params = e.get("method"), e.get("params", {})
            if method == "Runtime.exceptionThrown":
                out.append(f"exception: {params['exceptionDetails'].get('text')}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                out.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
        return out

    def dialogs(self) -> list[str]:
        opened = [e for e in self.events if e.get("method") == "Page.javascriptDialogOpening"]
        return [e["params"].get("message", "") for e in opened]

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
