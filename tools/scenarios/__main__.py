import sys

from tools.scenarios import main

sys.exit(main())
