"""What the continued pre-training loop (domainpt/pretrain.py) is made of: the data order and batches, the
loss, attention kernels, the learning-rate schedule, the bad-step policy, and the state a checkpoint saves."""
