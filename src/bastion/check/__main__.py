"""``python -m bastion.check URL ...``: the same as ``bastion check URL ...``."""

import sys

from bastion.check._cli import main

sys.exit(main(["check", *sys.argv[1:]]))
