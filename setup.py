"""conf/ and launch/ stay at the top of the checkout (where researchers edit them) and ship inside the package in a
wheel (minesweep/conf, minesweep/launch), so that `pip install .` gives console scripts that find their configs.
Everything else is in pyproject.toml."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONFIG_FOLDERS = ("conf", "launch")


class BuildPyWithConfigs(build_py):
    def run(self) -> None:
        super().run()
        for folder in CONFIG_FOLDERS:
            self.copy_tree(folder, str(Path(self.build_lib) / "minesweep" / folder))


setup(cmdclass={"build_py": BuildPyWithConfigs})
