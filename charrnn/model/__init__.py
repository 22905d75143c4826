"""The network: CharRNN and its cells, the fused and compiled tanh paths and their numba kernels, the
precision policy, and rebuilding a model on a device.

May import: charrnn.config, charrnn.errors, charrnn.data, charrnn.store. Never training/, inference/, cli/.
"""
