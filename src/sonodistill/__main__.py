import sys

from sonodistill.cli import main

sys.exit(main())
