"""Using a trained model: sampling (the batched stepper), evaluation (nats and bits per char, with its progress), and
the surprisal and hidden-unit views.

May import: model/, data/, store/, config, errors. Never training/, cli/, serve/, export/.
"""
