"""``python -m edgeml.fleet.cli`` = ``edgeml-fleet``."""

from edgeml.fleet.cli import main

main(prog_name="edgeml-fleet")
