"""Puts the repository's launch/ folder (launcher and sweeper presets) on Hydra's search path.

Registered as a ``hydra.plugins`` entry point in pyproject.toml.
"""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

LAUNCH_DIR = Path(__file__).resolve().parents[1] / "launch"
#: The experiment configs (an absolute path, so the console scripts work from any folder).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class LaunchSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if LAUNCH_DIR.is_dir():
            search_path.append(provider="minesweep-launch", path=f"file://{LAUNCH_DIR}")
