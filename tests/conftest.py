import torch

# The tiny models of these tests are far too small to gain from several threads, and on a busy 2-core
# machine two threads per process run several times slower.
torch.set_num_threads(1)
