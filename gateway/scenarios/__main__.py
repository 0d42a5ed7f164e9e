import sys

from gateway.scenarios import main

sys.exit(main())
