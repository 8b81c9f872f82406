"""Clients of the web viewer without a person, for its tests and its benchmark.

* :class:`HeadlessClient`: a browser without a page, a websocket client that speaks viser's
  protocol. It reports a camera (viser counts a browser as connected from its first camera
  message), can send widget changes and button clicks as the page does, and reads everything the
  server sends (counting the bytes), so the server works as for a page, with nothing drawn.
* :func:`find_chromium` / :data:`CHROMIUM_ARGS`: a headless Chromium (Debian's ``chromium``) for
  Playwright, with the flags that let it draw WebGL in software and keep off the network.
"""
from __future__ import annotations

import os
import shutil
import threading
from typing import Any, Optional

CHROMIUM_ARGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--use-angle=swiftshader",
    # it only needs localhost: keep it from reaching out (on a closed network those attempts fail slowly)
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-quic", "--disable-dev-shm-usage",
]


def find_chromium() -> Optional[str]:
    """A Chromium or Chrome executable: $STAG4D_CHROMIUM, else the first on PATH."""
    named = os.environ.get("STAG4D_CHROMIUM")
    if named:
        return named if os.path.isfile(named) else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class HeadlessClient:
    """One connection to a viser server on this machine (``127.0.0.1:port``).

    Args:
        position, wxyz, fov: the camera it reports (OpenCV axes, fov vertical in radians); the
            default is the reference camera of the default orbit (radius 2, 49.1 degrees).
        size: (width, height) of its pretended view.
    """

    def __init__(self, port: int, position=(0.0, 0.0, 2.0), wxyz=(0.0, 1.0, 0.0, 0.0), fov: float = 0.857,
                 size: tuple[int, int] = (640, 480)):
        import viser  # lazily, as everywhere: only the web viewer needs viser
        from websockets.sync.client import connect

        self.ws = connect(f"ws://127.0.0.1:{port}", subprotocols=[f"viser-v{viser.__version__}"], max_size=None)
        self.received_bytes = 0
        self.closed = False
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        width, height = size
        self.send({"type": "ViewerCameraMessage", "wxyz": list(wxyz), "position": list(position), "fov": fov,
                   "near": 0.01, "far": 1000.0, "image_height": height, "image_width": width,
                   "look_at": [0.0, 0.0, 0.0], "up_direction": [0.0, 1.0, 0.0]})

    def _read(self) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            for message in self.ws:
                self.received_bytes += len(message)
        except ConnectionClosed:
            pass

    def send(self, mapping: dict) -> None:
        import msgspec

        self.ws.send(msgspec.msgpack.encode(mapping))

    def set_value(self, handle: Any, value: Any) -> None:
        """What the page sends when a widget changes (a slider dragged, a dropdown picked)."""
        self.send({"type": "GuiUpdateMessage", "uuid": handle._impl.uuid, "updates": {"value": value}})

    def click(self, handle: Any) -> None:
        self.set_value(handle, True)

    def close(self) -> None:
        if not self.closed:
            self.ws.close()
            self._reader.join(timeout=5)
            self.closed = True


__all__ = ["CHROMIUM_ARGS", "HeadlessClient", "find_chromium"]
