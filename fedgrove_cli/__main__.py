"""`python -m fedgrove_cli` = `fedgrove`."""

from fedgrove_cli import main

main()
