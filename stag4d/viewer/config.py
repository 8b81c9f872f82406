"""Settings of the viewers (the ``viewer`` section of the run config). Light: no torch, no GUI."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from stag4d.settings import setting

DEFAULT_SIZE = 512  # largest default view; ``viewer_size`` overrides
FRONT_ENDS = ("off", "dearpygui", "web")
# What ``gui=`` also accepts, for the boolean switch it used to be (YAML and OmegaConf turn
# true/false/on/off/yes/no into booleans, which a string field receives as "True"/"False").
GUI_ALIASES = {"true": "dearpygui", "false": "off", "on": "dearpygui", "yes": "dearpygui", "no": "off",
               "none": "off", "": "off"}


def normalize_gui(value: Any) -> str:
    """``gui`` as one of :data:`FRONT_ENDS` when it is one or an alias (True -> dearpygui, False ->
    off); other values are returned as given (the range check then names them)."""
    if isinstance(value, bool):
        return "dearpygui" if value else "off"
    text = str(value).strip()
    return GUI_ALIASES.get(text.lower(), text.lower() if text.lower() in FRONT_ENDS else text)


@dataclass
class ViewerConfig:
    """The interactive viewers of ``main.py`` / ``visualize.py``."""

    gui: str = setting("off", "viewer: off, dearpygui (a desktop window; True is the same) or web (a viser "
                              "server for a browser, e.g. through an SSH port forward)", choices=FRONT_ENDS)
    viewer_size: Optional[int] = setting(None, "pixels: the window's view (null = ref_size, at most 512) and the web "
                                               "viewer's full-quality render height (null = 512)", ge=1)
    viewer_steps_per_frame: int = setting(1, "training steps per displayed frame (dearpygui) or per loop turn (web)",
                                          ge=1)
    viewer_autostart: bool = setting(False, "start training as soon as the viewer opens (else press Start)")
    viewer_host: str = setting("127.0.0.1", "web viewer: address to listen on (0.0.0.0 = every interface; the "
                                            "default serves this machine only, reached through an SSH forward)")
    viewer_port: int = setting(8080, "web viewer: port (the next free one when taken; 0 = any free port)",
                               ge=0, le=65535)
    viewer_update_steps: int = setting(20, "web viewer: training steps between two scene updates sent to the "
                                           "browsers", ge=1)

    def __post_init__(self) -> None:
        self.gui = normalize_gui(self.gui)

    def size_for(self, ref_size: int) -> int:
        return self.viewer_size if self.viewer_size is not None else min(ref_size, DEFAULT_SIZE)


__all__ = ["DEFAULT_SIZE", "FRONT_ENDS", "ViewerConfig", "normalize_gui"]
