import sys

from fedsim.agent.main import main

sys.exit(main(sys.argv[1:]))
