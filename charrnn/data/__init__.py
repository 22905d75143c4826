"""Text in, ids out: corpus sources and named corpora, the character vocabulary, encoding and its
memory-mapped cache, the contiguous splits and the parallel-stream batcher.

May import: charrnn.config, charrnn.errors, charrnn.store (atomic writes, the data directory).
"""
