"""``python -m ironcage_jupyter -f CONNECTION_FILE`` starts the wrapper kernel (the kernelspec's argv)."""

from .kernel import main

if __name__ == "__main__":
    main()
