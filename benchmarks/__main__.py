"""`python -m benchmarks`: the command line of benchmarks/main.py."""

from benchmarks.main import main

main()
