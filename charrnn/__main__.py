"""`python -m charrnn ...` (and `torchrun -m charrnn ...`) runs the command line."""

from .cli.commands import main

if __name__ == "__main__":
    main()
