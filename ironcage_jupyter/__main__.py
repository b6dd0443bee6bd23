"""``python -m ironcage_jupyter -f CONNECTION_FILE`` starts the wrapper kernel (the kernelspec's argv)."""

import os

# ipykernel imports debugpy when present, which warns about frozen modules on stderr; the wrapper
# never debugs (it does not advertise the debugger), so the check is pointless noise in server logs.
os.environ.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")

from .kernel import main  # noqa: E402

if __name__ == "__main__":
    main()
