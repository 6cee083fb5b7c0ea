"""overlayctl's commands, one module per group; overlayd/ctl.py puts their tables together."""
