import sys

from korllama.cli import main

sys.exit(main())
