"""The README's Quick start commands, read from the README itself.

The newcomer test (tests/test_newcomer.py) runs the first one as written on a fresh copy;
`.ci/run` installs with the first one's install part and runs the second, so what the README
tells a user to type is what CI types (`python tests/readme_commands.py install|test` prints it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start(readme: Path = README) -> tuple[str, str]:
    """(install and run the default study, run the tests): the two lines of the first bash
    block under the `## Quick start` heading."""
    text = readme.read_text()
    section = re.search(r"^## Quick start\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    if section is None:
        raise ValueError(f"{readme}: no '## Quick start' section")
    block = re.search(r"^```bash\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    if block is None:
        raise ValueError(f"{readme}: the Quick start section has no ```bash block")
    lines = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    if len(lines) != 2:
        raise ValueError(f"{readme}: the Quick start block has {len(lines)} commands, expected 2")
    return lines[0], lines[1]


def install_part(install_and_run: str) -> str:
    """The first command without its last step (`&& snakemake ...`, the default study)."""
    install, _, study = install_and_run.rpartition(" && ")
    if not install or not study.startswith("snakemake "):
        raise ValueError(
            f"the Quick start's first command does not end in `&& snakemake ...`: {install_and_run}"
        )
    return install


if __name__ == "__main__":
    install_and_run, test = quick_start()
    commands = {"run": install_and_run, "install": install_part(install_and_run), "test": test}
    if len(sys.argv) != 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: readme_commands.py {'|'.join(commands)}")
    print(commands[sys.argv[1]])
