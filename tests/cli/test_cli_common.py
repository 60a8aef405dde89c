"""What every command shares: ``--version`` on the top level and on each command."""

import pytest

from wsi_pixelcam import __version__
from wsi_pixelcam.cli import build_parser, main


def _command_names():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return sorted(sub.choices)


@pytest.mark.parametrize("argv", [[], *([name] for name in _command_names())])
def test_version_on_every_command(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main([*argv, "--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"wsi-pixelcam {__version__}"
