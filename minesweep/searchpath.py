"""Puts the repository's launch/ folder (launcher and sweeper presets) on Hydra's search path.

Registered as a ``hydra.plugins`` entry point in pyproject.toml.
"""

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


def _config_folder(name: str) -> Path:
    """``conf/`` or ``launch/``: inside the package when installed from a wheel (setup.py copies them there), else
    beside the package, in the checkout (``python train.py``, an editable install). Absolute, so the console scripts
    work from any folder."""
    package = Path(__file__).resolve().parent
    packaged = package / name
    return packaged if packaged.is_dir() else package.parent / name


LAUNCH_DIR = _config_folder("launch")
#: The experiment configs.
CONF_DIR = _config_folder("conf")


class LaunchSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if LAUNCH_DIR.is_dir():
            search_path.append(provider="minesweep-launch", path=f"file://{LAUNCH_DIR}")
