"""Open a page in Debian's headless Chromium: console messages and a screenshot."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--enable-logging=stderr", "--v=0", "--window-size=1100,2400"]
CONSOLE = re.compile(r"CONSOLE[^\]]*\] (.*)")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def open_page(path: str, screenshot: str) -> list[str]:
    """Console messages (and script errors) Chromium logged while rendering file://path."""
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", f"--screenshot={screenshot}",
                                 f"file://{path}"], capture_output=True, text=True, timeout=120)
    return [match.group(1) for match in CONSOLE.finditer(result.stderr)]
