"""Headless Chromium (Debian's `chromium` package, installed by `make prerequisites`) driven over
the DevTools protocol, to look at a web page as a person would: it runs the page's scripts,
lays it out at a window's size, and the test reads the rendered DOM and takes a screenshot.

It looks up and contacts nothing but 127.0.0.1: every other host name resolves to nothing
(`--host-resolver-rules`), and the background services that would call home (component
updates, sync, safe browsing lists, default apps) are off.

    with chromium_page(tmp_path / "profile") as page:
        page.navigate("http://127.0.0.1:8080/")
        title = page.evaluate("document.title")
        page.screenshot(tmp_path / "page.png")
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import shutil
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.support.processes import stop

#: No sandbox (the tests run as root), no GPU, no first-run UI, nothing in the background, and
#: no host name but 127.0.0.1.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]
LISTENING = re.compile(r"DevTools listening on (ws://127\.0\.0\.1:(\d+)/\S+)")


class Page:
    """One tab, over the DevTools protocol's websocket."""

    def __init__(self, connection: websocket.WebSocket) -> None:
        self.connection = connection
        self._ids = itertools.count(1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Call `method` and return its result (events that come first are skipped)."""
        call_id = next(self._ids)
        self.connection.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.connection.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> Path:
        """A PNG of the window, as laid out now."""
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot")["data"]))
        return path


@contextlib.contextmanager
def chromium_page(profile: Path, width: int = 1280, height: int = 900) -> Iterator[Page]:
    """A headless Chromium of a `width` x `height` window with a fresh profile in `profile`;
    its one tab. Stopped on exit."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("chromium is not installed: `make prerequisites` installs it (Debian's)")
    process = subprocess.Popen(
        [
            binary,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        said = []
        for line in process.stderr:  # it says where it listens, once it does
            said.append(line)
            if found := LISTENING.search(line):
                break
        else:
            pytest.fail("chromium did not start:\n" + "".join(said[-20:]))
        # Its other messages (GPU fallbacks and the like) are read, or a full pipe stalls it.
        threading.Thread(target=process.stderr.read, daemon=True).start()
        port = found.group(2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            tabs = json.loads(reply.read())
        (tab,) = [t for t in tabs if t["type"] == "page"]
        connection = websocket.create_connection(
            tab["webSocketDebuggerUrl"], timeout=60, suppress_origin=True
        )
        try:
            yield Page(connection)
        finally:
            connection.close()
    finally:
        stop(process, grace=10)
