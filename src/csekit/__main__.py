import sys

from csekit.cli.main import main

sys.exit(main())
