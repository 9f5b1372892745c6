"""``python -m heartlora …`` (and ``torchrun … -m heartlora train …``): the command line."""
import sys

from .cli import main

sys.exit(main())
