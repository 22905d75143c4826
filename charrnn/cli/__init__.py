"""The command line: the Typer app (parse options, build configs, call one library function, print) and
config files for `train`.

May import anything in the package; nothing in the package imports cli/.
"""
