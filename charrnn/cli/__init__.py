"""The command line: one module per command (train, sample, evaluate for `eval`, corpora, plot, info, runs, export,
serve: parse options, build configs, call one library function, print), common.py (error handling, logging, shared
options), commands.py (the Typer app built from them, and `main`), configfile.py (--config / --save-config).

May import anything in the package; nothing in the package imports cli/.
"""
