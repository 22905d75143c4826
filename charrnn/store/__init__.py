"""What charrnn keeps on disk: atomic writes, CHARRNN_HOME's paths, checkpoints and model files,
run directories and their logs, the runs table, checkpoint info and the loss plot.

May import: config, errors. Never model/, training/, inference/, cli/.
"""
