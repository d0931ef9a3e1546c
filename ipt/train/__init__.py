"""Training engine: pair-shard streams, the L1 + patch-contrastive objective, pretrain/finetune loops, DDP.

Import the submodules you need (``ipt.train.loop``, ``ipt.train.data``, ...); this package imports nothing at start-up
so that ``ipt --help`` stays fast.
"""
