import sys

# httpx imports its command-line client (click, rich, pygments) whenever they are installed,
# as they are beside fedsim; a None entry makes that optional import fail as it does where
# they are absent, which saves every agent about 0.1 s of start-up it never uses.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from fedsim.agent.main import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
