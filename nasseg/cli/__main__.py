"""``python -m nasseg.cli``."""
from nasseg.cli import main

main()
