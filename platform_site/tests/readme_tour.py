"""The README's five-minute tour, read from README.md: its shell blocks, as a newcomer runs them."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
TOUR_HEADING = "## A five-minute tour with curl"


def tour_blocks() -> list[str]:
    """The tour's ```bash blocks, in order."""
    text = README.read_text()
    start = text.index(TOUR_HEADING)
    end = text.index("\n## ", start + len(TOUR_HEADING))
    return re.findall(r"```bash\n(.*?)```", text[start:end], flags=re.DOTALL)


def commands(block: str) -> list[tuple[str, str]]:
    """A block's commands, each with the answer the README shows under it ('' when none).

    A command runs on while a quote is open or a line ends in a backslash; a heredoc runs to
    its end marker. The answer is the `# {...}` comment lines right after the command."""
    found, lines, index = [], block.splitlines(), 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        command = line
        heredoc = re.search(r"<<'?(\w+)'?", line)
        if heredoc:
            while lines[index] != heredoc.group(1):
                command += "\n" + lines[index]
                index += 1
            command += "\n" + lines[index]
            index += 1
        while not _complete(command):
            command += "\n" + lines[index]
            index += 1
        shown = []
        while index < len(lines) and lines[index].startswith("#") and (shown or lines[index][1:].strip().startswith("{")):
            shown.append(lines[index][1:].strip())
            index += 1
        found.append((command, " ".join(shown)))
    return found


def _complete(command: str) -> bool:
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:  # a quote still open
        return False
    return True


def run(command: str, *, env: dict[str, str], cwd: Path, with_headers: bool = False) -> str:
    """Run one README command with bash; with_headers adds curl's -i (to read X-Cache)."""
    if with_headers:
        assert command.startswith("curl -s "), command
        command = "curl -s -i " + command.removeprefix("curl -s ")
    result = subprocess.run(["bash", "-c", command], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout
