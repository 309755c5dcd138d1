import sys

from hitveto.cli import main

sys.exit(main())
