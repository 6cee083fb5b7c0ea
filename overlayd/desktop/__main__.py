"""python3 -m overlayd.desktop: start the Overlays app."""

import sys

from overlayd.desktop.app import main

sys.exit(main(sys.argv))
