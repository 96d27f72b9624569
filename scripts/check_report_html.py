#!/usr/bin/env python3
"""Open an HTML audit report in headless Chromium and fail on any error it reports.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: the
browser reads commands on file descriptor 3 and writes replies on 4), so no network port is
opened. The report is loaded from a ``file://`` URL. The check fails when the page logs a console
error, throws an uncaught exception, fails to load a resource, or contains an image that does not
decode. With ``--screenshot`` it saves a full-page PNG.

Usage:
    python scripts/check_report_html.py REPORT.html [--screenshot PAGE.png] [--timeout SECONDS]

Exit codes: 0 no error found, 1 errors found or the browser failed, 2 usage error (including a
missing ``chromium`` executable).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-pipe", "--window-size=1200,900",
)  # fmt: skip
PAGE_WIDTH = 1200

# Resolves to the alt texts of images that fail to decode.
IMAGE_CHECK = """
Promise.all(Array.from(document.images).map(
    (image) => image.decode().then(() => (image.naturalWidth > 0 ? null : image.alt), () => image.alt)
)).then((failed) => JSON.stringify({count: document.images.length, failed: failed.filter((alt) => alt !== null)}))
"""


class DevToolsPipe:
    """Sends DevTools commands to Chromium over a pipe and collects the events it emits."""

    def __init__(self, to_browser: int, from_browser: int, timeout: float) -> None:
        self.to_browser = to_browser
        self.from_browser = from_browser
        self.deadline = time.monotonic() + timeout
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result, collecting the events that arrive meanwhile."""
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools command {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> None:
        """Read messages until an event named ``method`` has arrived."""
        while not any(event.get("method") == method for event in self.events):
            self.events.append(self._read())

    def _read(self) -> dict:
        while b"\0" not in self.buffer:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("Chromium did not respond before the timeout")
            ready, _, _ = select.select([self.from_browser], [], [], remaining)
            if ready:
                chunk = os.read(self.from_browser, 1 << 16)
                if not chunk:
                    raise RuntimeError("Chromium closed the DevTools pipe")
                self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)


def start_chromium(executable: str, profile: str) -> tuple[subprocess.Popen, int, int]:
    """Start Chromium with the DevTools pipe on its file descriptors 3 (commands) and 4 (replies)."""
    commands_read, commands_write = os.pipe()
    replies_read, replies_write = os.pipe()

    def map_pipes() -> None:
        os.dup2(commands_read, 3)
        os.dup2(replies_write, 4)

    process = subprocess.Popen(
        [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        # The child keeps descriptors 3 and 4, which map_pipes points at the pipes before exec.
        preexec_fn=map_pipes, pass_fds=(3, 4),
    )
    os.close(commands_read)
    os.close(replies_write)
    return process, commands_write, replies_read


def collect_errors(events: list[dict]) -> list[str]:
    """Return one line per console error, uncaught exception, error log entry or failed load."""
    errors = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            errors.append(f"console {params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append(f"uncaught exception: {details.get('exception', {}).get('description', details.get('text'))}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            errors.append(f"log error: {params['entry'].get('text')} {params['entry'].get('url', '')}".rstrip())
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            errors.append(f"failed to load a resource: {params.get('errorText')}")
    return errors


def check_page(pipe: DevToolsPipe, url: str, screenshot: Path | None) -> list[str]:
    """Load ``url`` in a new page and return the errors found."""
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        pipe.send(f"{domain}.enable", session=session)
    pipe.send("Page.navigate", {"url": url}, session=session)
    pipe.wait_for("Page.loadEventFired")

    result = pipe.send("Runtime.evaluate", {"expression": IMAGE_CHECK, "awaitPromise": True, "returnByValue": True}, session=session)
    images = json.loads(result["result"]["value"])
    errors = collect_errors(pipe.events)
    errors += [f"image does not decode: {alt}" for alt in images["failed"]]
    print(f"{images['count']} image(s) decoded: {images['count'] - len(images['failed'])}")

    if screenshot is not None:
        height = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]["height"]
        clip = {"x": 0, "y": 0, "width": PAGE_WIDTH, "height": height, "scale": 1}
        shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        print(f"wrote screenshot {screenshot} ({PAGE_WIDTH}x{int(height)} CSS pixels)")
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path, help="HTML file to check")
    parser.add_argument("--screenshot", type=Path, default=None, help="write a full-page PNG screenshot here")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for Chromium (default 60)")
    args = parser.parse_args()
    if not args.report.is_file():
        parser.error(f"{args.report} is not a file")
    executable = shutil.which("chromium")
    if executable is None:
        parser.error("chromium is not installed; on Debian: apt-get install chromium")

    with tempfile.TemporaryDirectory(prefix="check-report-chromium-") as profile:
        process, to_browser, from_browser = start_chromium(executable, profile)
        try:
            pipe = DevToolsPipe(to_browser, from_browser, args.timeout)
            errors = check_page(pipe, args.report.resolve().as_uri(), args.screenshot)
            pipe.send("Browser.close")
            process.wait(timeout=args.timeout)
        except (TimeoutError, RuntimeError, OSError) as error:
            process.kill()
            stderr = process.communicate()[1].decode(errors="replace")[-2000:]
            print(f"Chromium check failed: {error}\n{stderr}", file=sys.stderr)
            return 1
        finally:
            os.close(to_browser)
            os.close(from_browser)

    for line in errors:
        print(f"ERROR {line}", file=sys.stderr)
    print("no errors" if not errors else f"{len(errors)} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
