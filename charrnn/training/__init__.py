"""Training a model: `train()` sets a run up, the Trainer runs the loop, and its policies (schedule
and stop rule, weight averaging, resume, size choice, dropout decision, distributed, progress,
samples while training, the end-of-run report) each live in a module of their own.

May import: model/, data/, store/, inference/ (scoring), config, errors. Never cli/, serve/,
export/.
"""
